"""``README.md`` of a budget study folder: the command that made it, its setting and its table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from analysis.budget.sweep import Target
from analysis.budget.table import IN_DOMAIN, domains_of
from analysis.provenance import git_commit, made_on
from upperson.io import atomic_write_text

README_NAME = "README.md"


def _ci(row: pd.Series, metric: str, domain: str) -> str:
    v, lo, hi = (float(row[f"{metric}_{domain}{s}"]) for s in ("", "_low", "_high"))
    return "n/a" if not math.isfinite(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def _cell(text: object) -> str:
    """A table cell: the text with its pipes escaped."""
    return str(text).replace("|", "\\|")


def results_table(df: pd.DataFrame, targets: Sequence[Target]) -> str:
    """The points as a Markdown table: exact trainable parameters, seeds, R@1 per domain with its
    interval, the frontier and the paper's default marked."""
    domains = domains_of(targets)
    names = {IN_DOMAIN: "in-domain"}
    head = (["point", "configuration", "trainable", "% of all", "seeds"]
            + [f"R@1 {names.get(d, d)}" for d in domains] + ["mAP in-domain", "Pareto (in-domain R@1)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        label = _cell(r["label"])
        if bool(r["default"]) and "paper default" not in label:  # the grid's own label may say it already
            label += " (paper default)"
        cells = [f"`{_cell(r['point'])}`", label, f"{int(r['trainable_params']):,}",
                 f"{float(r['trainable_percent']):.2f}", str(int(r["seeds"]))]
        cells += [_ci(r, "R1", d) for d in domains] + [_ci(r, "mAP", IN_DOMAIN), "yes" if bool(r["pareto"]) else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(out_dir: Path, df: pd.DataFrame, targets: Sequence[Target], *, command: str,
                 details: Mapping[str, object]) -> Path:
    """``out_dir/README.md``: how the folder was made (command, date, commit), the setting, the table."""
    lines = ["# Retrieval against the number of trainable parameters", "", "Made by:", "", "```", command, "```", "",
             f"on {made_on()}, commit {git_commit()}.", ""]
    lines += [f"- {k}: {v}" for k, v in details.items()]
    lines += ["", "Points (`budget.csv`; intervals: 95 % percentile bootstrap over each test split's queries of "
              "the seed-averaged per-query values; the figure `budget.png`; every run's per-query files in "
              "`per_query/POINT/seed-S/DOMAIN.csv.gz`):", "", results_table(df, targets), ""]
    path = Path(out_dir) / README_NAME
    atomic_write_text(path, "\n".join(lines))
    return path
