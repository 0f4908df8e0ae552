"""Training curves: loss and R@1 per epoch, for one run or several (``metrics.jsonl``)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis import figure_registry, style
from upperson.assets import EMBEDDED_DIR, REPO_ROOT
from upperson.train.records import METRICS_NAME

log = logging.getLogger(__name__)


def metrics_file(path: Path) -> Path:
    """``path`` itself if it is a file, else ``path/metrics.jsonl``."""
    path = Path(path)
    return path if path.is_file() else path / METRICS_NAME


def read_metrics(path: Path) -> pd.DataFrame:
    """One run's per-epoch log as a DataFrame (one row per epoch, sorted)."""
    f = metrics_file(path)
    if not f.is_file():
        raise FileNotFoundError(f"no {METRICS_NAME} at {path}")
    df = pd.read_json(f, lines=True)
    if df.empty or "epoch" not in df.columns:
        raise ValueError(f"{f}: no per-epoch rows (expected JSON lines with an 'epoch' field)")
    return df.sort_values("epoch").reset_index(drop=True)


def run_label(path: Path) -> str:
    path = Path(path)
    if path.is_file():
        return path.parent.name if path.name == METRICS_NAME else path.stem
    return path.name


def read_runs(paths: Sequence[Path], labels: Optional[dict[str, str]] = None) -> list[tuple[str, pd.DataFrame]]:
    """(label, metrics) per run; runs without a readable log are skipped with a warning."""
    out = []
    for p in paths:
        try:
            df = read_metrics(Path(p))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("skipping %s: %s", p, exc)
            continue
        name = run_label(Path(p))
        out.append(((labels or {}).get(name, name), df))
    return out


def curves_figure(runs: Sequence[tuple[str, pd.DataFrame]], out_dir: Path, *, name: str = "curves",
                  title: Optional[str] = None) -> style.FigureRecord:
    """Two panels: training loss per epoch, and R@1 of the evaluated epochs (saved)."""
    fig, caption = training_curves_figure(runs, title=title)
    return style.save(fig, out_dir, name, caption)


def example_runs(n: int = 10) -> list[tuple[str, pd.DataFrame]]:
    """The shipped ablation's training logs (the first ``n``), for the figure checks (tests/test_figure_text.py)."""
    files = sorted((REPO_ROOT / "assets" / "ablation" / "curves").glob("*.jsonl"))[:n]
    return read_runs(files)


def _curves_examples() -> list[figure_registry.Example]:
    return [figure_registry.Example("ablation", (example_runs(),), {"title": "Ablation: training curves per variant"})]


@figure_registry.register(examples=_curves_examples)
def training_curves_figure(runs: Sequence[tuple[str, pd.DataFrame]], *, title: Optional[str] = None,
                           layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`curves_figure`, unsaved."""
    if not runs:
        raise ValueError("no training log to plot")
    colours = style.qualitative(len(runs))
    if layout.narrow:  # a phone: loss above R@1, the legend below both
        fig = style.figure(layout.width, 5.6 + (0.17 * math.ceil(len(runs) / 2) if len(runs) > 1 else 0),
                           layout="constrained")
        ax_loss, ax_r1 = fig.subplots(2, 1)
    else:
        fig = style.figure(8.0, 3.4, layout="constrained")
        ax_loss, ax_r1 = fig.subplots(1, 2)
    splits = set()
    for (label, df), colour in zip(runs, colours):
        if "loss" in df.columns:
            ax_loss.plot(df["epoch"], df["loss"], marker="o", ms=3, color=colour, label=label)
        if "R1" in df.columns:
            ev = df[np.isfinite(df["R1"].astype(float))]
            ax_r1.plot(ev["epoch"], ev["R1"], marker="o", ms=3, color=colour, label=label)
            if len(ev):
                best = ev.loc[ev["R1"].idxmax()]
                ax_r1.scatter([best["epoch"]], [best["R1"]], marker="*", s=80, color=colour, edgecolors="black",
                              linewidths=0.4, zorder=4)
            if "split" in df.columns:
                splits.update(str(s) for s in df["split"].dropna().unique())
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Loss")
    split_txt = "/".join(sorted(splits)) or "evaluation"
    ax_r1.set_xlabel("epoch")
    ax_r1.set_ylabel(f"R@1 (%) on {split_txt}")
    ax_r1.set_title("R@1 (★ = best epoch)")
    for ax in (ax_loss, ax_r1):
        ax.grid(True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    handles, labels = ax_loss.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_r1.get_legend_handles_labels()
    if len(runs) > 1:
        if layout.narrow:
            fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
        else:
            fig.legend(handles, labels, loc="outside right center", frameon=False)
    heading = title or (f"Training curves: {runs[0][0]}" if len(runs) == 1 else "Training curves")
    fig.suptitle(style.wrap(heading, fig.get_size_inches()[0] - 0.2, 11))
    caption = (f"Training loss per epoch (left) and text-to-image R@1 on the {split_txt} split at each evaluated "
               f"epoch (right; the star marks the selected checkpoint) for {len(runs)} run(s): "
               + ", ".join(label for label, _ in runs) + ".")
    return fig, caption


def default_logs() -> list[Path]:
    """Training logs to plot when none is named: the embedded model's, else the shipped ablation's,
    else those of a local ablation sweep (``runs/ablation/*``)."""
    for candidate in (EMBEDDED_DIR / "upperson" / METRICS_NAME, EMBEDDED_DIR / METRICS_NAME):
        if candidate.is_file():
            extra = [p for p in (EMBEDDED_DIR / "full-finetune" / METRICS_NAME,) if p.is_file()]
            return [candidate, *extra]
    shipped = REPO_ROOT / "assets" / "ablation" / "curves"
    if shipped.is_dir() and any(shipped.glob("*.jsonl")):
        return sorted(shipped.glob("*.jsonl"))
    local = Path("runs") / "ablation"
    return sorted(p.parent for p in local.glob(f"*/{METRICS_NAME}")) if local.is_dir() else []
