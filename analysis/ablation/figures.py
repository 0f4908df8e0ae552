"""The ablation's figures: bars per variant, R@1 against trainable parameters, the training curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis import figure_registry, style
from analysis.curves import curves_figure, read_runs
from upperson.assets import REPO_ROOT
from analysis.ablation.table import has_intervals

#: metrics the bars can show (column -> label); the CLI draws R1 and mAP, the demo lets one choose
BAR_METRICS = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "mAP": "mAP", "mINP": "mINP"}


def example_tables() -> dict[str, pd.DataFrame]:
    """Tables for the figure checks (tests/test_figure_text.py): the shipped study's, the same without its
    uncertainty columns (a sweep of one seed), and three variants."""
    shipped = pd.read_csv(REPO_ROOT / "assets" / "ablation" / "ablation.csv")
    plain = shipped.drop(columns=[c for c in shipped.columns if "_ci_" in c or c.endswith("_std")])
    return {"shipped": shipped, "one-seed": plain, "three": shipped.iloc[[0, 1, 7]].reset_index(drop=True)}


def _bars_examples() -> list[figure_registry.Example]:
    tables = example_tables()
    return [figure_registry.Example(f"{name}", (df,)) for name, df in tables.items()] + [
        figure_registry.Example("shipped-all-metrics", (tables["shipped"], tuple(BAR_METRICS)))]


def _params_examples() -> list[figure_registry.Example]:
    return [figure_registry.Example(name, (df,)) for name, df in example_tables().items()]


def plot_bars(df: pd.DataFrame, out_dir: Path, *, name: str = "ablation_bars") -> style.FigureRecord:
    """Grouped bars: R@1 and mAP per variant (saved)."""
    fig, caption = bars_figure(df)
    return style.save(fig, out_dir, name, caption)


@figure_registry.register(examples=_bars_examples)
def bars_figure(df: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP"), *, layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`plot_bars`, unsaved, for any of :data:`BAR_METRICS`; error bars
    where the table has that metric's interval columns."""
    unknown = [m for m in metrics if m not in BAR_METRICS or m not in df.columns]
    if unknown or not metrics:
        raise ValueError(f"cannot plot {unknown or 'no metric'}: choose from "
                         f"{', '.join(m for m in BAR_METRICS if m in df.columns)}")
    n = len(df)
    fig = style.figure(max(5.0, 1.2 + 0.62 * n), 3.8, layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    w = 0.76 / len(metrics)
    intervals = has_intervals(df)
    offsets = (np.arange(len(metrics)) - (len(metrics) - 1) / 2) * w
    colours = {"R1": style.OKABE_ITO[0], "mAP": style.OKABE_ITO[1], "R5": style.OKABE_ITO[2],
               "R10": style.OKABE_ITO[4], "mINP": style.OKABE_ITO[3]}
    for off, col in zip(offsets, metrics):
        colour, lab = colours[col], BAR_METRICS[col]
        vals = df[col].to_numpy(dtype=float)
        yerr = _yerr(df, col) if intervals and f"{col}_ci_low" in df.columns else None
        bars = ax.bar(x + off, vals, w, color=colour, label=lab, edgecolor="white", linewidth=0.5, yerr=yerr,
                      error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.2"})
        tops = vals if yerr is None else vals + np.nan_to_num(yerr[1])
        for b, v, t in zip(bars, vals, tops):
            if np.isfinite(v):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, t), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, df["label"].tolist(), rotation=35, ha="right")
    for tick, variant in zip(ax.get_xticklabels(), df["variant"]):
        if variant == "upperson":
            tick.set_fontweight("bold")
    tops = list(metrics) + [f"{m}_ci_high" for m in metrics if intervals and f"{m}_ci_high" in df.columns]
    top = np.nanmax(df[tops].to_numpy(dtype=float)) if n else 1.0
    ax.set_ylim(0, (top if np.isfinite(top) and top > 0 else 1.0) * 1.15)
    ax.set_ylabel("score (%)")
    ax.grid(True, axis="y")
    ax.set_axisbelow(True)
    ax.legend(frameon=False, ncol=len(metrics), loc="upper left")
    ax.set_title("Ablation: retrieval per variant (test split)")
    names = " and ".join([", ".join(BAR_METRICS[m] for m in metrics[:-1]), BAR_METRICS[metrics[-1]]]
                         if len(metrics) > 1 else [BAR_METRICS[metrics[0]]])
    caption = (f"Text-to-image {names} (%) on the test split for each variant of the ablation: the "
               "zero-shot backbone, each component alone, each pair, all three (UP-Person), UP-Person with a "
               "vanilla prefix or sequential adapters, and a full fine-tune." + uncertainty_note(df))
    return fig, caption


def _yerr(df: pd.DataFrame, col: str) -> np.ndarray:
    """(2, n) distances from each value to its interval's ends (NaN where there is none)."""
    v = df[col].to_numpy(dtype=float)
    lo = pd.to_numeric(df[f"{col}_ci_low"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(df[f"{col}_ci_high"], errors="coerce").to_numpy(dtype=float)
    return np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])


def uncertainty_note(df: pd.DataFrame) -> str:
    if not has_intervals(df):
        return (" No error bars: this table has no per-query results (one seed, single test split), so "
                "differences of a few points may be noise.")
    def column(name: str) -> pd.Series:  # a table written by hand or by an older sweep may lack some
        return pd.to_numeric(df[name], errors="coerce").dropna() if name in df.columns else pd.Series(dtype=float)

    seeds, r, s = column("seeds"), column("ci_resamples"), column("ci_seed")
    span = ("?" if not len(seeds) else f"{int(seeds.min())}" if seeds.min() == seeds.max()
            else f"{int(seeds.min())}-{int(seeds.max())}")
    return (f" Values are means over {span} training seed(s) per variant; error bars are "
            f"95 % percentile-bootstrap intervals over test queries ({int(r.iloc[0]) if len(r) else '?'} resamples, "
            f"seed {int(s.iloc[0]) if len(s) else '?'}) of the seed-averaged per-query results.")


GROUP_MARKERS = {"baseline": "s", "single": "o", "pair": "D", "full": "*", "design": "P", "other": "X"}


def plot_params(df: pd.DataFrame, out_dir: Path, *, name: str = "ablation_params") -> style.FigureRecord:
    """R@1 against trainable parameters (log scale); the zero-shot model (0 parameters) is a line (saved)."""
    fig, caption = params_figure(df)
    return style.save(fig, out_dir, name, caption)


@figure_registry.register(examples=_params_examples)
def params_figure(df: pd.DataFrame, *, layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`plot_params`, unsaved."""
    fig = style.figure(5.6, 4.0, layout="constrained")
    ax = fig.subplots()
    groups = list(dict.fromkeys(df["group"].tolist())) if "group" in df else ["other"]
    colours = dict(zip(groups, style.OKABE_ITO))
    trained = df[df["trainable_params"] > 0]
    intervals = has_intervals(df)
    for g in groups:
        sub = trained[trained["group"] == g] if "group" in trained else trained
        if len(sub):
            if intervals:
                ax.errorbar(sub["trainable_params"], sub["R1"], yerr=_yerr(sub, "R1"), fmt="none", ecolor=colours[g],
                            elinewidth=0.9, capsize=2.5, zorder=2)
            ax.scatter(sub["trainable_params"], sub["R1"], marker=GROUP_MARKERS.get(g, "o"), s=70 if g == "full" else 36,
                       color=colours[g], label=g, edgecolors="black", linewidths=0.4, zorder=3)
    for _, r in trained.iterrows():
        ax.annotate(r["label"], (r["trainable_params"], r["R1"]), xytext=(4, 3), textcoords="offset points",
                    fontsize=6.5)
    for _, r in df[df["trainable_params"] <= 0].iterrows():
        ax.axhline(r["R1"], color="0.4", ls="--", lw=0.9, label=f"{r['label']} (0 trainable)")
        if intervals and np.isfinite(float(r.get("R1_ci_low", math.nan))):
            ax.axhspan(float(r["R1_ci_low"]), float(r["R1_ci_high"]), color="0.4", alpha=0.12, lw=0)
    if len(trained):
        ax.set_xscale("log")
        lo, hi = trained["trainable_params"].min(), trained["trainable_params"].max()
        ax.set_xlim(lo / 2.5, hi * 4)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("R@1 (%)")
    ax.grid(True, which="major")
    ax.legend(frameon=False, fontsize=7, loc="best")
    ax.set_title("Retrieval against trainable parameters")
    caption = ("Text-to-image R@1 (%) against the number of trainable parameters (log scale) for each variant; "
               "the dashed line is the zero-shot backbone, which trains nothing." + uncertainty_note(df)
               .replace("error bars are", "vertical bars (and the band around the dashed line) are"))
    return fig, caption



def ablation_figures(df: pd.DataFrame, out_dir: Path) -> list[style.FigureRecord]:
    """The table's figures (and the training curves of the runs it names, when they exist)."""
    if df.empty:
        raise ValueError("the ablation table is empty: no variant has a complete run")
    figs = [plot_bars(df, out_dir), plot_params(df, out_dir)]
    curves_dir = Path(out_dir) / "curves"
    if curves_dir.is_dir() and any(curves_dir.glob("*.jsonl")):
        order = {n: i for i, n in enumerate(df["variant"])}
        files = sorted(curves_dir.glob("*.jsonl"), key=lambda p: order.get(p.stem, len(order)))
        labels = dict(zip(df["variant"], df["label"]))
        runs = read_runs(files, labels={p.stem: labels.get(p.stem, p.stem) for p in files})
        if runs:
            figs.append(curves_figure(runs, out_dir, name="ablation_curves",
                                      title="Ablation: training curves per variant"))
    return figs
