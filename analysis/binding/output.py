"""The binding probe's files: ``binding.csv``, ``binding_attributes.csv``, ``README.md`` and the figure."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from analysis import figure_registry, style
from analysis.binding.pairs import PROBES
from analysis.binding.attributes import ABSENT, FIELDS
from analysis.binding.scoring import Accuracy, Difference, accuracy
from upperson.io import atomic_write_text
from upperson.stats import format_interval

PAIRS_CSV = "binding.csv"
PER_PAIR_CSV = "binding_per_pair.csv"
ATTRIBUTES_CSV = "binding_attributes.csv"
README = "README.md"
FIGURE = "binding"
PAIR_COLUMNS = ("model", "probe", "side", "pairs", "accuracy", "ci_low", "ci_high", "chance", "ties", "captions",
                "seed", "diff_vs", "diff", "diff_ci_low", "diff_ci_high", "diff_significant")
ATTRIBUTE_COLUMNS = ("model", "attribute", "queries", "accuracy", "ci_low", "ci_high", "chance")


@dataclass(frozen=True)
class ProbeResult:
    """One model's accuracy on one probe, image side (captions rank images) or text side."""

    model: str
    probe: str
    side: str
    accuracy: Accuracy
    scores: Optional[np.ndarray] = None  # per pair: 1, 0.5 or 0
    versus: str = ""  # the model the difference is to (the first one), "" for the first itself
    diff: Optional[Difference] = None

    @property
    def name(self) -> str:
        return self.probe if self.side == "image" else f"{self.probe} (text)"


def _csv(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def write_tables(out: Path, results: Sequence[ProbeResult], attributes: Mapping[str, Mapping[str, Accuracy]], *,
                 captions: str, seed: int) -> list[Path]:
    """The two CSV tables (atomically); the attribute table only when there are attribute results."""
    def diff_cells(r: ProbeResult) -> tuple:
        if r.diff is None:
            return ("", "", "", "", "")
        d = r.diff
        return (r.versus, f"{d.value:.4f}", f"{d.low:.4f}", f"{d.high:.4f}", str(d.significant).lower())

    rows = [(r.model, r.probe, r.side, r.accuracy.n, f"{r.accuracy.value:.4f}", f"{r.accuracy.low:.4f}",
             f"{r.accuracy.high:.4f}", f"{r.accuracy.chance:.4f}", r.accuracy.ties,
             captions if r.side == "image" else "template", seed, *diff_cells(r)) for r in results]
    paths = [Path(out) / PAIRS_CSV]
    atomic_write_text(paths[0], _csv(PAIR_COLUMNS, rows))
    per_pair = [(r.model, r.probe, r.side, i, f"{s:g}") for r in results if r.scores is not None
                for i, s in enumerate(r.scores)]
    if per_pair:  # every statistic can be rebuilt from it
        paths.append(Path(out) / PER_PAIR_CSV)
        atomic_write_text(paths[-1], _csv(("model", "probe", "side", "pair", "score"), per_pair))
    if attributes:
        arows = [(m, f, a.n, f"{a.value:.4f}", f"{a.low:.4f}", f"{a.high:.4f}", f"{a.chance:.4f}")
                 for m, per in attributes.items() for f, a in per.items()]
        paths.append(Path(out) / ATTRIBUTES_CSV)
        atomic_write_text(paths[-1], _csv(ATTRIBUTE_COLUMNS, arows))
    return paths


def _flt(row: Mapping[str, str], key: str, where: str) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: column {key!r} is missing or not a number ({row.get(key)!r})") from None


def parse_tables(pairs_csv: str, attributes_csv: Optional[str] = None
                 ) -> tuple[list[ProbeResult], dict[str, dict[str, Accuracy]]]:
    """The probe's results and per-attribute accuracies from the text of ``binding.csv`` (and of
    ``binding_attributes.csv``, when there is one) as :func:`write_tables` wrote them: what
    :func:`draw_binding_figure` and the tables take (no per-pair scores). ValueError when a file is not one."""
    reader = csv.DictReader(io.StringIO(pairs_csv))
    missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{PAIRS_CSV}: not the probe's table (no column {missing[0]!r})")
    results = []
    for i, row in enumerate(reader, start=2):
        where = f"{PAIRS_CSV} line {i}"
        acc = Accuracy(_flt(row, "accuracy", where), _flt(row, "ci_low", where), _flt(row, "ci_high", where),
                       _flt(row, "chance", where), int(_flt(row, "pairs", where)), int(_flt(row, "ties", where)))
        diff = None
        if (row.get("diff") or "").strip():
            diff = Difference(_flt(row, "diff", where), _flt(row, "diff_ci_low", where), _flt(row, "diff_ci_high", where),
                              str(row.get("diff_significant", "")).strip().lower() == "true")
        results.append(ProbeResult(str(row["model"]), str(row["probe"]), str(row["side"]), acc,
                                   versus=str(row.get("diff_vs") or "") if diff else "", diff=diff))
    if not results:
        raise ValueError(f"{PAIRS_CSV}: no rows")
    attributes: dict[str, dict[str, Accuracy]] = {}
    if attributes_csv is not None:
        reader = csv.DictReader(io.StringIO(attributes_csv))
        missing = [c for c in ATTRIBUTE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{ATTRIBUTES_CSV}: not the probe's attribute table (no column {missing[0]!r})")
        for i, row in enumerate(reader, start=2):
            where = f"{ATTRIBUTES_CSV} line {i}"
            attributes.setdefault(str(row["model"]), {})[str(row["attribute"])] = Accuracy(
                _flt(row, "accuracy", where), _flt(row, "ci_low", where), _flt(row, "ci_high", where),
                _flt(row, "chance", where), int(_flt(row, "queries", where)))
    return results, attributes


def read_tables(out: Path) -> tuple[list[ProbeResult], dict[str, dict[str, Accuracy]]]:
    """:func:`parse_tables` of the folder ``out`` written by ``python -m analysis binding``."""
    attrs = Path(out) / ATTRIBUTES_CSV
    return parse_tables((Path(out) / PAIRS_CSV).read_text(encoding="utf-8"),
                        attrs.read_text(encoding="utf-8") if attrs.is_file() else None)


def pair_table(results: Sequence[ProbeResult]) -> str:
    """Markdown: one row per probe and side, one column per model (accuracy [95 % CI])."""
    models = list(dict.fromkeys(r.model for r in results))
    names = list(dict.fromkeys(r.name for r in results))
    cell = {(r.name, r.model): r.accuracy for r in results}
    lines = ["| probe | pairs | chance | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for name in names:
        first = next(cell[(name, m)] for m in models if (name, m) in cell)
        cells = [format_interval(a.value, a.low, a.high, 1) if (a := cell.get((name, m))) else "-" for m in models]
        lines.append(f"| {name} | {first.n} | {first.chance:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_table(results: Sequence[ProbeResult]) -> str:
    """Markdown: each later model minus the first, per probe, with the paired interval; "" with one model."""
    rows = [r for r in results if r.diff is not None]
    if not rows:
        return ""
    lines = ["| model | versus | probe | difference (points) | 95 % CI | significant |", "|---|---|---|---|---|---|"]
    for r in rows:
        d = r.diff
        lines.append(f"| {r.model} | {r.versus} | {r.name} | {d.value:+.1f} | [{d.low:+.1f}, {d.high:+.1f}] "
                     f"| {'**yes**' if d.significant else 'no'} |")
    return "\n".join(lines)


def attribute_table(attributes: Mapping[str, Mapping[str, Accuracy]]) -> str:
    """Markdown: one row per attribute, its chance level, one column per model."""
    models = list(attributes)
    fields = list(dict.fromkeys(f for per in attributes.values() for f in per))
    lines = ["| attribute | chance | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for f in fields:
        first = next(attributes[m][f] for m in models if f in attributes[m])
        cells = [format_interval(a.value, a.low, a.high, 1) if (a := attributes[m].get(f)) else "-" for m in models]
        lines.append(f"| {f} | {first.chance:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _examples() -> list[figure_registry.Example]:
    """Three models on every probe and attribute (synthetic scores), and one model without attributes."""
    rng = np.random.default_rng(0)
    models = ("zero-shot backbone", "UP-Person", "full fine-tune (ft_lr3e-4)")
    names = [(p, "image") for p in PROBES] + [("swap", "text"), ("hair", "text")]
    results = [ProbeResult(m, p, side, accuracy(rng.integers(0, 2, 50).astype(float), resamples=50))
               for m in models for p, side in names]
    fields = [*FIELDS, *(f"{f} (present)" for f in ABSENT)]
    attrs = {m: {f: accuracy(rng.integers(0, 2, 50).astype(float), chance=30.0, resamples=50) for f in fields}
             for m in models}
    return [figure_registry.Example("three models", (results, attrs)),
            figure_registry.Example("pairs only", (results[:len(names)], {}))]


@figure_registry.register(examples=_examples)
def draw_binding_figure(results: Sequence[ProbeResult], attributes: Mapping[str, Mapping[str, Accuracy]], *,
                        layout: style.Layout = style.PAPER) -> tuple:
    """``(figure, caption)``, unsaved: accuracy per probe (and per attribute, when given) per model,
    with 95 % intervals and chance."""
    models = list(dict.fromkeys(r.model for r in results))
    colours = style.qualitative(len(models))
    panels = 2 if attributes else 1
    width = layout.fit(7.0)
    fig = style.figure(width, (3.0 if not layout.narrow else 3.4) * panels + 0.25 * len(models) * layout.narrow,
                       layout="constrained")
    axes = np.atleast_1d(fig.subplots(panels, 1))
    bar_w = 0.8 / max(1, len(models))

    def bars(ax, names, get, chance_of, rotation):
        x = np.arange(len(names))
        for j, (m, c) in enumerate(zip(models, colours)):
            vals = [get(n, m) for n in names]
            xs = x - 0.4 + bar_w * (j + 0.5)
            have = [(xi, a) for xi, a in zip(xs, vals) if a is not None]
            if not have:
                continue
            ax.bar([h[0] for h in have], [h[1].value for h in have], bar_w, color=c, label=m)
            ax.errorbar([h[0] for h in have], [h[1].value for h in have],
                        yerr=[[h[1].value - h[1].low for h in have], [h[1].high - h[1].value for h in have]],
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        for xi, n in zip(x, names):
            ax.hlines(chance_of(n), xi - 0.45, xi + 0.45, colors="black", linestyles="dashed", linewidth=0.8)
        ax.set_xticks(x, names, rotation=rotation, ha="right" if rotation else "center",
                      rotation_mode="anchor" if rotation else "default")
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")

    cell = {(r.name, r.model): r.accuracy for r in results}
    names = list(dict.fromkeys(r.name for r in results))
    bars(axes[0], names, lambda n, m: cell.get((n, m)), lambda n: 50.0, 45 if layout.narrow else 0)
    n_pairs = max(r.accuracy.n for r in results)
    title_size = style.RC["axes.titlesize"]
    axes[0].set_title(style.wrap(f"Minimal pairs: the right image (text) outranks its twin ({n_pairs} pairs per probe)",
                                 width, title_size))
    if attributes:
        fields = list(dict.fromkeys(f for per in attributes.values() for f in per))
        chance = {f: next(per[f].chance for per in attributes.values() if f in per) for f in fields}
        bars(axes[1], fields, lambda f, m: attributes.get(m, {}).get(f), chance.get, 90 if layout.narrow else 30)
        axes[1].set_title(style.wrap("Top-1 other identity shares the query's attribute", width, title_size))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=1 if layout.narrow else len(models), frameon=False)
    caption = ("Attribute-binding probe. Top: share of minimal pairs (" + "; ".join(f"{k}: {v}" for k, v in PROBES.items())
               + ") in which the caption ranks the right image above its twin (text: the image ranks its caption "
               "above the twin's caption); dashed: chance (50 %). "
               + ("Bottom: share of queries whose top-1 image of another identity has the query's attribute value; "
                  "dashed: chance (a random ranking). " if attributes else "")
               + "Error bars: 95 % percentile bootstrap intervals.")
    return fig, caption


def binding_figure(results: Sequence[ProbeResult], attributes: Mapping[str, Mapping[str, Accuracy]],
                   out: Path) -> style.FigureRecord:
    """:func:`draw_binding_figure`, saved as ``out/binding.{png,svg}``."""
    fig, caption = draw_binding_figure(results, attributes)
    return style.save(fig, out, FIGURE, caption)


def write_readme(out: Path, results: Sequence[ProbeResult], attributes: Mapping[str, Mapping[str, Accuracy]], *,
                 command: str, details: Mapping[str, str], figure: style.FigureRecord) -> Path:
    """``README.md``: the command, the setting, both tables and the figure."""
    lines = ["# Attribute-binding probe", "", f"`{command}`", ""]
    lines += [f"- {k}: {v}" for k, v in details.items()]
    lines += ["", "## Minimal pairs (accuracy %, 95 % CI; chance 50)", "", pair_table(results), ""]
    diffs = difference_table(results)
    if diffs:
        lines += ["## Differences on the same pairs (paired bootstrap)", "", diffs, ""]
    if attributes:
        lines += ["## Per attribute (top-1 other identity shares the value, %, 95 % CI)", "",
                  attribute_table(attributes), ""]
    lines += [f"![{figure.name}]({figure.png.name})", "", figure.caption, ""]
    path = Path(out) / README
    atomic_write_text(path, "\n".join(lines))
    return path
