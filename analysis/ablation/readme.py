"""The ablation folder's ``README.md``: the command, the setting, the table and the significance of each difference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis import style
from analysis.provenance import git_commit, made_on
from analysis.ablation.figures import uncertainty_note
from analysis.ablation.study import VARIANTS
from analysis.ablation.table import REFERENCE, has_intervals
from upperson.io import atomic_write_text

def _fmt(v, digits: int = 2) -> str:
    v = float(v)
    return f"{v:.{digits}f}" if math.isfinite(v) else "-"


def significance_table(df: pd.DataFrame) -> str:
    """Markdown: R@1 with its interval and std, and the paired difference to UP-Person with its
    interval; *yes* where the interval excludes zero. Empty string without intervals."""
    if not has_intervals(df):
        return ""
    lines = ["| variant | seeds | R@1 (mean) | 95 % CI | std over seeds | R@1 - UP-Person | 95 % CI of the difference "
             "| significant |", "|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        diff = float(r.get("R1_diff_vs_upperson", math.nan))
        sig = r.get("R1_diff_significant")
        if r["variant"] == REFERENCE:
            verdict = "(reference)"
        elif not math.isfinite(diff):
            verdict = "-"
        else:
            verdict = "**yes**" if str(sig).lower() == "true" else "no"
        seeds = r.get("seeds")
        lines.append(f"| {r['variant']} | {int(seeds) if pd.notna(seeds) else '-'} | {_fmt(r['R1'])} "
                     f"| [{_fmt(r['R1_ci_low'])}, {_fmt(r['R1_ci_high'])}] | {_fmt(r.get('R1_std', math.nan))} "
                     f"| {_fmt(diff, 2) if math.isfinite(diff) else '-'} "
                     f"| [{_fmt(r.get('R1_diff_ci_low', math.nan))}, {_fmt(r.get('R1_diff_ci_high', math.nan))}] "
                     f"| {verdict} |")
    return "\n".join(lines)


def _markdown_table(df: pd.DataFrame) -> str:
    cols = ["variant", "R1", "mAP", "trainable_params", "trainable_percent", "train_time_s", "epochs"]
    cols = [c for c in cols if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in ("R1", "mAP", "trainable_percent"):
                cells.append(f"{float(v):.2f}")
            elif c == "train_time_s":
                cells.append(f"{float(v):.0f}")
            elif c == "trainable_params":
                cells.append(f"{int(v):,}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(out_dir: Path, df: pd.DataFrame, figures: Sequence[style.FigureRecord], *, command: str,
                 details: dict) -> Path:
    """``README.md``: the command that made this folder, the setting and the table."""
    now = made_on()
    lines = [
        "# Ablation of UP-Person's components",
        "",
        "Made by:",
        "",
        "```",
        command,
        "```",
        "",
        f"on {now}, commit {git_commit()}.",
        "",
    ]
    for k, v in details.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Variants (overrides on the base preset):", ""]
    for v in VARIANTS:
        if v.name in set(df["variant"]):
            lines.append(f"- `{v.name}`: {v.description}; `{' '.join(v.overrides) or '(none)'}`")
    lines += ["", "Results (`ablation.csv`, test split of the selected checkpoint):", "", _markdown_table(df), ""]
    sig = significance_table(df)
    if sig:
        lines += ["Uncertainty and differences to UP-Person (R@1, percent points):" + uncertainty_note(df)
                  + " The difference is a paired bootstrap: both variants on the same resampled queries; "
                  "*significant* means its 95 % interval excludes zero (docs/statistics.md).", "", sig, ""]
    else:
        lines += ["No intervals: this table was made without per-query results (one seed), so differences of a few "
                  "points are within noise. Rerun the sweep (`--seeds 3`) to get intervals (docs/statistics.md).", ""]
    lines += ["Figures:", ""]
    for f in figures:
        lines.append(f"- `{f.png.name}` / `{f.svg.name}`: {f.caption}")
    lines.append("")
    path = Path(out_dir) / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path
