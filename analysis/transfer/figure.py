"""The transfer heat map: each cell's R@1 with its interval written in it, beside the paired
difference UP-Person - full fine-tune per cell (a diverging scale centred on 0)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from analysis import style
from analysis.transfer.domains import REAL_DATASETS
from analysis.transfer.plan import LABELS, METHODS, UPPERSON

NAME = "transfer_matrix"


def _label(name: str) -> str:
    """A ToyPEDES domain by its name (``cuhk``), a real dataset by its short name (``CUHK``)."""
    return REAL_DATASETS.get(name, name)


def _ink(rgba) -> str:
    """Black or white text, whichever reads on the cell's colour."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _fitting_size(ax, texts: list[list[str]], ncols: int, largest: float = 7.5) -> float:
    """The largest font size (points, at most ``largest``) at which the longest cell line fits
    its cell's width (DejaVu Sans digits are about 0.6 em wide)."""
    fig = ax.get_figure()
    width_pt = ax.get_position().width * fig.get_size_inches()[0] * 72.0 / max(ncols, 1)
    chars = max((len(line) for row in texts for t in row for line in t.split("\n")), default=1)
    return min(largest, 0.9 * width_pt / (0.6 * chars))


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


def _write_cells(ax, im, values: np.ndarray, texts: list[list[str]]) -> None:
    size = _fitting_size(ax, texts, values.shape[1])
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


def transfer_figure(df: pd.DataFrame, out_dir: Path, gaps: Optional[dict] = None) -> style.FigureRecord:
    """Save the heat map of a matrix (``cells.build_matrix``) as ``out_dir/transfer_matrix.{png,svg}``,
    with the gaps (``cells.gaps``) written at its foot when given."""
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
                r1_text[i][j] = f"{r.R1:.1f}\n[{r.R1_ci_low:.1f}, {r.R1_ci_high:.1f}]"
    diff = np.full((len(sources), len(targets)), np.nan)
    diff_text = [["n/a"] * len(targets) for _ in sources]
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            r = cell.get((UPPERSON, s, t))
            if r is not None and not pd.isna(r.R1_diff):
                diff[i, j] = r.R1_diff
                diff_text[i][j] = f"{r.R1_diff:+.1f}\n[{r.R1_diff_ci_low:.1f}, {r.R1_diff_ci_high:.1f}]"

    height = max(2.6, 0.45 * len(keys) + 1.1)
    fig, (ax1, ax2) = style.subplots(1, 2, size=(7.2, height), gridspec_kw={"width_ratios": [1.0, 1.0]})
    cols = [_label(t) for t in targets]
    top = float(np.nanmax(r1)) if np.isfinite(r1).any() else 100.0
    im1 = _grid(ax1, r1, r1_text, style.SEQUENTIAL, 0.0, max(top, 1.0),
                [f"{LABELS[m]} ({_label(s)})" for s, m in keys], cols, "R@1 [95% CI] of each method (source)")
    span = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
    im2 = _grid(ax2, diff, diff_text, "PuOr", -max(span, 0.5), max(span, 0.5), [_label(s) for s in sources], cols,
                "UP-Person - full fine-tune, R@1")
    ax2.set_ylabel("source")
    fig.colorbar(im1, ax=ax1, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    fig.colorbar(im2, ax=ax2, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    foot = gap_text(gaps)
    fig.subplots_adjust(left=0.2, right=0.95, top=0.9, bottom=(0.12 + 0.1 / height) + (0.3 / height if foot else 0),
                        wspace=0.42)
    if foot:
        fig.text(0.5, 0.08 / height, foot, ha="center", va="bottom", fontsize=7)
    _write_cells(ax1, im1, r1, r1_text)  # after the layout: the font fits the cells' final width
    _write_cells(ax2, im2, diff, diff_text)
    caption = ("Transfer matrix: each row a method trained on a source domain (selected on the source's val "
               "split), each column a target's test split. Left: R@1 with its 95 % percentile-bootstrap interval "
               "over the target's test queries; right: the paired difference UP-Person - full fine-tune with its "
               "interval (positive: UP-Person ahead). n/a: a cell not in the study. Foot: the in-domain and "
               "cross-domain gaps (docs/transfer.md) with their joint bootstrap intervals.")
    return style.save(fig, out_dir, NAME, caption)
