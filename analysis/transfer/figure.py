"""The transfer heat map: each cell's R@1 with its interval written in it, beside the paired
difference UP-Person - full fine-tune per cell (a diverging scale centred on 0)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from analysis import figure_registry, style
from analysis.transfer.domains import REAL_DATASETS
from analysis.transfer.plan import FULL, LABELS, METHODS, UPPERSON, ZERO

NAME = "transfer_matrix"


def _label(name: str) -> str:
    """A ToyPEDES domain by its name (``cuhk``), a real dataset by its short name (``CUHK``)."""
    return REAL_DATASETS.get(name, name)


def _ink(rgba) -> str:
    """Black or white text, whichever reads on the cell's colour."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _fitting_size(ax, texts: list[list[str]], ncols: int, nrows: int, largest: float = 7.5) -> float:
    """The largest font size (points, at most ``largest``) at which the longest cell line fits
    its cell's width (DejaVu Sans digits are about 0.6 em wide) and the lines fit its height."""
    fig = ax.get_figure()
    width_pt = ax.get_position().width * fig.get_size_inches()[0] * 72.0 / max(ncols, 1)
    height_pt = ax.get_position().height * fig.get_size_inches()[1] * 72.0 / max(nrows, 1)
    chars = max((len(line) for row in texts for t in row for line in t.split("\n")), default=1)
    lines = max((t.count("\n") + 1 for row in texts for t in row), default=1)
    return min(largest, 0.9 * width_pt / (0.6 * chars), 0.9 * height_pt / (1.25 * lines))


def _grid(ax, values: np.ndarray, texts: list[list[str]], cmap, vmin: float, vmax: float, rows: list[str],
          cols: list[str], title: str):
    cm = style.plt.get_cmap(cmap).with_extremes(bad="#EEEEEE")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("target (test split)")
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=9, loc="left")
    return im


def _write_cells(ax, im, values: np.ndarray, texts: list[list[str]], smallest: float) -> None:
    size = _fitting_size(ax, texts, values.shape[1], values.shape[0])
    if size < 6.5:  # narrow cells: the interval's ends on two lines, if that makes the text larger
        split = [[t.replace(", ", ",\n") for t in row] for row in texts]
        if _fitting_size(ax, split, values.shape[1], values.shape[0]) > size:
            texts, size = split, _fitting_size(ax, split, values.shape[1], values.shape[0])
    size = max(smallest, size)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ink = "0.45" if math.isnan(v) else _ink(im.cmap(im.norm(v)))
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=size, color=ink, linespacing=1.1)


def gap_text(gaps: Optional[dict]) -> str:
    """The R@1 gaps (``cells.gaps``) in one short line, for the figure's foot."""
    if gaps is None:
        return ""
    r = gaps["R1"]

    def fmt(m: dict) -> str:
        return f"{m['value']:+.1f} [{m['low']:.1f}, {m['high']:.1f}]"
    return (f"UP-Person - full fine-tune, R@1: in-domain gap {fmt(r['in_domain'])}  ·  cross-domain gap "
            f"{fmt(r['cross_domain'])}  ·  cross - in {fmt(r['cross_minus_in'])}")


def seeds_text(df: pd.DataFrame) -> str:
    """How many training seeds the trained cells average ("2 seeds per trained cell"; "" for one)."""
    if "seeds" not in df.columns:
        return ""
    trained = pd.to_numeric(df.loc[df["method"] != "zero-shot", "seeds"], errors="coerce").dropna().astype(int)
    if trained.empty or trained.max() <= 1:
        return ""
    lo, hi = int(trained.min()), int(trained.max())
    return f"trained cells: mean of {hi if lo == hi else f'{lo}-{hi}'} seeds (intervals over test queries)"


def example_matrix(sources: tuple[str, ...] = ("cuhk", "icfg", "rstp"), extra: tuple[str, ...] = (),
                   seed: int = 0) -> pd.DataFrame:
    """A synthetic matrix in ``cells.build_matrix``'s columns (every method on every source and target),
    for the figure checks."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in sources:
        for t in sources + extra:
            base = float(rng.uniform(5, 95))
            for m in METHODS:
                v = base + {UPPERSON: 3.0, FULL: 0.0, ZERO: -20.0}[m] * (m != ZERO or base > 25)
                d = float(rng.normal(3, 4)) if m == UPPERSON else float("nan")
                rows.append({"source": s, "target": t, "method": m, "seeds": 1 if m == ZERO else 3,
                             "R1": v, "R1_ci_low": v - 4.3,
                             "R1_ci_high": min(100.0, v + 4.1), "R1_diff": d, "R1_diff_ci_low": d - 5.2,
                             "R1_diff_ci_high": d + 5.0})
    return pd.DataFrame(rows)


def example_gaps() -> dict:
    """Gaps in ``cells.gaps``' form (R@1 only, as the figure reads them), for the figure checks."""
    def m(v: float) -> dict:
        return {"value": v, "low": v - 4.2, "high": v + 3.9}
    return {"R1": {"in_domain": m(2.1), "cross_domain": m(-11.35), "cross_minus_in": m(-13.4)}}


def _examples() -> list[figure_registry.Example]:
    return [figure_registry.Example("3x3 with gaps", (example_matrix(),), {"gaps": example_gaps()}),
            figure_registry.Example("2 sources, 3 real targets", (example_matrix(("cuhk", "icfg"), tuple(
                REAL_DATASETS), seed=1),)),
            figure_registry.Example("one cell", (example_matrix(("cuhk",)),))]


def transfer_figure(df: pd.DataFrame, out_dir: Path, gaps: Optional[dict] = None) -> style.FigureRecord:
    """Save the heat map of a matrix (``cells.build_matrix``) as ``out_dir/transfer_matrix.{png,svg}``,
    with the gaps (``cells.gaps``) written at its foot when given."""
    fig, caption = transfer_matrix_figure(df, gaps)
    return style.save(fig, out_dir, NAME, caption)


@figure_registry.register(examples=_examples)
def transfer_matrix_figure(df: pd.DataFrame, gaps: Optional[dict] = None, *, layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`transfer_figure`, unsaved. On a narrow layout the two maps are stacked,
    the intervals take two lines and no cell text is under 9 px on the screen."""
    narrow = layout.narrow
    sep, gap = "\n", "\n" if narrow else " "  # a phone's cells are narrow: the interval on two lines
    sources = list(dict.fromkeys(df["source"]))
    targets = sources + [t for t in dict.fromkeys(df["target"]) if t not in sources]
    order = {m: i for i, m in enumerate(METHODS)}
    keys = sorted({(s, m) for s, m in zip(df["source"], df["method"])},
                  key=lambda sm: (sources.index(sm[0]), order[sm[1]]))
    cell = {(r.method, r.source, r.target): r for r in df.itertuples()}

    r1 = np.full((len(keys), len(targets)), np.nan)
    r1_text = [["n/a"] * len(targets) for _ in keys]
    for i, (s, m) in enumerate(keys):
        for j, t in enumerate(targets):
            r = cell.get((m, s, t))
            if r is not None:
                r1[i, j] = r.R1
                r1_text[i][j] = f"{r.R1:.1f}{sep}[{r.R1_ci_low:.1f},{gap}{r.R1_ci_high:.1f}]"
    diff = np.full((len(sources), len(targets)), np.nan)
    diff_text = [["n/a"] * len(targets) for _ in sources]
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            r = cell.get((UPPERSON, s, t))
            if r is not None and not pd.isna(r.R1_diff):
                diff[i, j] = r.R1_diff
                diff_text[i][j] = f"{r.R1_diff:+.1f}{sep}[{r.R1_diff_ci_low:.1f},{gap}{r.R1_diff_ci_high:.1f}]"

    cols = [_label(t) for t in targets]
    method_rows = [f"{LABELS[m]}{chr(10) if narrow else ' '}({_label(s)})" for s, m in keys]
    titles = ("R@1 [95% CI] of each method (source)", "UP-Person - full fine-tune, R@1")
    foot = "\n".join(t for t in (gap_text(gaps), seeds_text(df)) if t)
    if narrow:  # the maps stacked, each as tall as its rows need
        row_h = 0.5
        h1, h2 = row_h * len(keys) + 0.9, row_h * len(sources) + 0.9
        foot = style.wrap(foot.replace("  ·  ", "\n"), layout.width - 0.2, 7.5) if foot else ""
        height = h1 + h2 + 0.2 + (0.14 * (foot.count("\n") + 1) if foot else 0)
        fig = style.figure(layout.width, height, layout="constrained")
        ax1, ax2 = fig.subplots(2, 1, height_ratios=[h1, h2])
        titles = tuple(style.wrap(t, 2.2, 9) for t in titles)
    else:
        height = max(2.6, 0.45 * len(keys) + 1.1)
        fig, (ax1, ax2) = style.subplots(1, 2, size=(layout.fit(7.2), height), gridspec_kw={"width_ratios": [1.0, 1.0]})
    top = float(np.nanmax(r1)) if np.isfinite(r1).any() else 100.0
    im1 = _grid(ax1, r1, r1_text, style.SEQUENTIAL, 0.0, max(top, 1.0), method_rows, cols, titles[0])
    span = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
    im2 = _grid(ax2, diff, diff_text, "PuOr", -max(span, 0.5), max(span, 0.5), [_label(s) for s in sources], cols,
                titles[1])
    ax2.set_ylabel("source")
    bar_size = 7.5 if narrow else 7
    fig.colorbar(im1, ax=ax1, fraction=0.04, pad=0.02).ax.tick_params(labelsize=bar_size)
    fig.colorbar(im2, ax=ax2, fraction=0.04, pad=0.02).ax.tick_params(labelsize=bar_size)
    if narrow:
        if foot:
            fig.supxlabel(foot, fontsize=7.5, ha="center")
        fig.get_layout_engine().execute(fig)  # the final axes, so the cell font fits them
    else:
        fig.subplots_adjust(left=0.2, right=0.95, top=0.9,
                            bottom=(0.12 + 0.1 / height) + (0.3 * (foot.count("\n") + 1) / height if foot else 0),
                            wspace=0.42)
        if foot:
            fig.text(0.5, 0.08 / height, foot, ha="center", va="bottom", fontsize=7)
    smallest = 7.5 if narrow else 4.5  # >= 9 px on a phone's screen; >= 9 px in a file
    _write_cells(ax1, im1, r1, r1_text, smallest)  # after the layout: the font fits the cells' final width
    _write_cells(ax2, im2, diff, diff_text, smallest)
    caption = ("Transfer matrix: each row a method trained on a source domain (selected on the source's val "
               "split), each column a target's test split. Left: R@1 with its 95 % percentile-bootstrap interval "
               "over the target's test queries; right: the paired difference UP-Person - full fine-tune with its "
               "interval (positive: UP-Person ahead). n/a: a cell not in the study. Foot: the in-domain and "
               "cross-domain gaps (docs/transfer.md) with their joint bootstrap intervals, and how many training "
               "seeds each trained cell averages.")
    return fig, caption
