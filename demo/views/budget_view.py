"""The Budget view: R@1 against trainable parameters (``python -m analysis budget``), one point at a time.

Reads a study folder through :mod:`demo.views.study_files` (the shipped ``assets/budget``, or a
``--studies`` folder): ``budget.csv`` as the CLI wrote it. The frontier is drawn by the CLI's own
function (:func:`analysis.budget.figure.budget_figure`, for the visitor's screen), on the domains
the table has (its ``queries_<domain>`` columns). Choosing a point shows its configuration (the
grid's overrides), its exact trainable parameters and its numbers with their intervals.

``/budget`` (folder) -> (figure, notes, points); ``/budget_point`` (folder, point) -> (notes, numbers).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from analysis.budget.figure import budget_figure
from analysis.budget.table import IN_DOMAIN, METRICS
from demo.context import DemoContext, SharedUI
from demo.markup import text as esc
from demo.search import QueryError
from demo.views.common import cache_of, figure_with_caption, screen_layout
from demo.views.study_files import StudyFiles, StudyMissing, require_filled
from demo.views.study_panel import ItemsView, build_items_view, made_by, readme_command

log = logging.getLogger(__name__)

KIND = "budget"
TABLE = "budget.csv"
README = "README.md"  # analysis.budget.readme writes it: the command that made the study
MAX_README_BYTES = 2**20
NEEDED = ("point", "kind", "default", "overrides", "trainable_params", "total_params", "seeds")
STUDIES, DRAWINGS = "budget-studies", "budget-drawings"


@dataclass(frozen=True)
class BudgetStudy:
    folder: Path
    table: pd.DataFrame
    domains: tuple[str, ...]  # in-domain first, then the targets
    command: str = ""  # from the README ("" when unknown)


def domains_in(df: pd.DataFrame) -> list[str]:
    """The domains of a budget table: its ``queries_<domain>`` columns, in order."""
    return [c[len("queries_"):] for c in df.columns if c.startswith("queries_")]


def load(ctx: DemoContext, folder: object) -> tuple[tuple, BudgetStudy]:
    files = StudyFiles(ctx.study_roots)
    path = files.folder(KIND, folder)
    key = files.stamp(path, (TABLE, README))

    def make() -> BudgetStudy:
        df = files.read_csv(KIND, path, TABLE, remade_by="python -m analysis budget")
        domains = domains_in(df)
        need = [*NEEDED, *(f"{m}_{d}{s}" for d in domains for m in METRICS for s in ("", "_low", "_high"))]
        missing = [c for c in need if c not in df.columns]
        if missing or df.empty or not domains:
            why = f"no column {missing[0]!r}" if missing else "no rows" if df.empty else "no domain columns"
            raise QueryError(f"{TABLE} is not a budget table written by `python -m analysis budget` ({why}).")
        numbers = ["trainable_params", "total_params", "seeds", *(f"queries_{d}" for d in domains),
                   *(c for c in need[len(NEEDED):])]
        require_filled(df, TABLE, "python -m analysis budget", numbers, [c for c in ("pareto",) if c in df.columns])
        df["default"] = df["default"].astype(str).str.strip().str.lower() == "true"
        df["point"] = df["point"].astype(str)
        command = ""
        if (path / README).is_file():
            command = readme_command(files.read_bytes(KIND, path, README, MAX_README_BYTES).decode("utf-8", "replace"))
        return BudgetStudy(path, df, tuple(domains), command)

    return key, cache_of(ctx, STUDIES, 8).get_or_make(key, make)


def _num(v: object) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _json_number(v: float):
    """``v`` for a JSON answer: None where it is not a finite number (an undefined std of one seed)."""
    return v if math.isfinite(v) else None


def _domain_label(d: str) -> str:
    return "in-domain (the source's test split)" if d == IN_DOMAIN else f"target {d}"


def points(study: BudgetStudy) -> list[dict]:
    """Every point of the table: name, kind, trainable parameters and R@1 per domain with its interval."""
    out = []
    for _, r in study.table.iterrows():
        p = {"point": r["point"], "label": str(r.get("label", "")), "kind": str(r["kind"]), "default": bool(r["default"]),
             "trainable_params": int(_num(r["trainable_params"])), "seeds": int(_num(r["seeds"]))}
        for d in study.domains:
            p[f"R1_{d}"] = [_json_number(_num(r[f"R1_{d}{s}"])) for s in ("", "_low", "_high")]
        out.append(p)
    return out


def notes(study: BudgetStudy, given: bool) -> str:
    df = study.table
    where = f"folder {esc(study.folder)}" if given else f"{esc(study.folder.parent.name)}/{esc(study.folder.name)}"
    default = df.loc[df["default"], "point"].tolist()
    front = df.loc[df["pareto"].astype(str).str.lower() == "true", "point"].tolist() if "pareto" in df.columns else []
    seeds = sorted({int(_num(s)) for s in df["seeds"]})
    lines = [f"**{len(df)} points** from {where}, on {len(study.domains)} test domain(s): "
             f"{esc(', '.join(study.domains))} (*{IN_DOMAIN}*: the source's own test split).",
             f"Seeds per point: {'/'.join(map(str, seeds))}. Bars: 95 % bootstrap intervals over test queries of the "
             "seed-averaged model."]
    if default:
        lines.append(f"The paper's default configuration (star): {esc(', '.join(default))}.")
    if front:
        lines.append(f"Pareto frontier (in-domain R@1): {esc(', '.join(front))}.")
    lines.append("Choose a point below for its configuration and numbers.")
    if study.command:
        lines.append(made_by(study.command))
    return "\n\n".join(lines)


def _drawn(ctx: DemoContext, key: tuple, study: BudgetStudy) -> tuple[str, str]:
    """(figure file, caption) for the visitor's screen (cached per study and layout)."""
    layout = screen_layout()

    def draw() -> tuple[str, str]:
        try:
            return figure_with_caption(ctx, lambda: budget_figure(study.table, list(study.domains), layout=layout))
        except (KeyError, ValueError, TypeError) as exc:
            raise QueryError(f"{TABLE} cannot be drawn ({type(exc).__name__}: {exc}).") from None

    return cache_of(ctx, DRAWINGS, 16).get_or_make((key, layout.name), draw)


def show(ctx: DemoContext, folder: object):
    """(figure, notes, points) -- the ``/budget`` action; the default study missing is a note, not an error."""
    try:
        key, study = load(ctx, folder)
    except StudyMissing as exc:
        return None, f"ℹ️ {esc(exc)}", []
    given = isinstance(folder, str) and bool(folder.strip())
    fig, caption = _drawn(ctx, key, study)
    return fig, notes(study, given) + f"\n\n**Figure:** {esc(caption)}", points(study)


def _fmt(v: float, lo: float, hi: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def point_numbers(study: BudgetStudy, name: object) -> dict:
    """The row of point ``name``: configuration, parameters, seeds and every metric with its interval."""
    m = study.table[study.table["point"] == name] if isinstance(name, str) else study.table.iloc[0:0]
    if m.empty:
        raise QueryError(f"Point must be one of {', '.join(study.table['point'])}; got {str(name)[:40]!r}.")
    r = m.iloc[0]
    out = {"point": r["point"], "label": str(r.get("label", "")), "kind": str(r["kind"]), "default": bool(r["default"]),
           "pareto": str(r.get("pareto", "")).strip().lower() == "true", "overrides": str(r["overrides"]),
           "trainable_params": int(_num(r["trainable_params"])), "total_params": int(_num(r["total_params"])),
           "seeds": int(_num(r["seeds"])), "domains": {}}
    for d in study.domains:
        block = {"queries": int(_num(r.get(f"queries_{d}"))) if math.isfinite(_num(r.get(f"queries_{d}"))) else None}
        for k in METRICS:
            block[k] = {"value": _num(r[f"{k}_{d}"]), "low": _num(r[f"{k}_{d}_low"]), "high": _num(r[f"{k}_{d}_high"]),
                        "seed_std": _num(r.get(f"{k}_{d}_std"))}
        out["domains"][d] = block
    return out


def show_point(ctx: DemoContext, folder: object, name: object):
    """(notes, numbers) of one point -- the ``/budget_point`` action."""
    try:
        _, study = load(ctx, folder)
    except StudyMissing as exc:
        return f"ℹ️ {esc(exc)}", {}
    p = point_numbers(study, name)
    tags = [t for t, on in (("the paper's default", p["default"]), ("on the Pareto frontier", p["pareto"])) if on]
    share = 100.0 * p["trainable_params"] / max(1, p["total_params"])
    lines = [f"**{esc(p['point'])}**" + (f" · {esc(p['label'])}" if p["label"] and p["label"] != "nan" else "")
             + (f" · {', '.join(tags)}" if tags else ""),  # (our own words: not escaped)
             f"**Configuration:** {esc(p['overrides'])}",
             f"**Trainable parameters:** {p['trainable_params']:,} (exact; {share:.3g} % of {p['total_params']:,}) · "
             f"**seeds:** {p['seeds']}"]
    for d, block in p["domains"].items():
        n = f", {block['queries']:,} queries" if block["queries"] else ""
        parts = []
        for k in METRICS:
            b = block[k]
            std = f" (seed std {b['seed_std']:.1f})" if math.isfinite(b["seed_std"]) else ""
            parts.append(f"{'R@1' if k == 'R1' else k} {_fmt(b['value'], b['low'], b['high'])}{std}")
        lines.append(f"- {esc(_domain_label(d))}{n}: " + " · ".join(parts))
    lines.append("Intervals: 95 % percentile bootstrap over test queries of the seed-averaged per-query values.")
    for block in p["domains"].values():
        for k in METRICS:
            block[k] = {name: _json_number(v) for name, v in block[k].items()}
    return "\n\n".join(lines), p


VIEW = ItemsView(
    key="budget", label="Budget", figure_label="R@1 against trainable parameters", figure_id="frontier",
    intro=("Retrieval against the number of trainable parameters (`python -m analysis budget`): prefix length, "
           "LoRA rank, adapter width and depth, with the full fine-tune and zero-shot. Choose a point for its "
           "configuration and numbers."),
    item="point", item_label="Point", json_label="The points as JSON", item_json_id="point-json",
    doc="The frontier figure, notes and every point.",
    item_doc="One point: its configuration, exact trainable parameters and numbers with intervals.")


def _first_point(points: Sequence[dict]) -> Optional[str]:
    """The paper's default configuration, else the first point."""
    return next((p["point"] for p in points if p["default"]), points[0]["point"] if points else None)


def build_budget_tab(ctx: DemoContext, ui: SharedUI) -> None:
    """The Budget tab's components and events (inside ``with gr.Tab(...)``)."""
    build_items_view(VIEW, lambda folder: show(ctx, folder), lambda folder, point: show_point(ctx, folder, point),
                     _first_point)
