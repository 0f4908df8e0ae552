"""An ablation folder: the table, the files it names and its figures, written in one order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import style
from analysis.ablation.figures import ablation_figures
from analysis.ablation.files import copy_curves, copy_per_query, write_csv


def write_study(df: pd.DataFrame, out_dir: Path) -> list[style.FigureRecord]:
    """``ablation.csv``, the runs' curves and per-query files copied beside it, then the figures
    (the curves figure reads the copied curves); returns the figures."""
    out_dir = Path(out_dir)
    write_csv(df, out_dir / "ablation.csv")
    copy_curves(df, out_dir)
    copy_per_query(df, out_dir)
    return ablation_figures(df, out_dir)
