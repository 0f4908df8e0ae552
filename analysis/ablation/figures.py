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
    return [figure_registry.Example("shipped", (tables["shipped"],)),
            figure_registry.Example("three-all-metrics", (tables["three"], tuple(BAR_METRICS)))]


def _params_examples() -> list[figure_registry.Example]:
    tables = example_tables()
    return [figure_registry.Example(name, (tables[name],)) for name in ("shipped", "one-seed")]


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
    across = layout.narrow  # a phone: one row per variant (horizontal bars), its label readable beside it
    if across:
        fig = style.figure(layout.width, 1.3 + n * (0.13 * len(metrics) + 0.1), layout="constrained")
    else:
        fig = style.figure(layout.fit(max(5.0, 1.2 + 0.62 * n)), 3.8, layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    w = 0.76 / len(metrics)
    intervals = has_intervals(df)
    offsets = (np.arange(len(metrics)) - (len(metrics) - 1) / 2) * w
    colours = {"R1": style.OKABE_ITO[0], "mAP": style.OKABE_ITO[1], "R5": style.OKABE_ITO[2],
               "R10": style.OKABE_ITO[4], "mINP": style.OKABE_ITO[3]}
    # a value on each bar: above it (turned upright when the bars are narrow), or after it on a phone
    value_size, upright = (7.5, False) if across else (6, len(metrics) > 2)
    for off, col in zip(offsets, metrics):
        colour, lab = colours[col], BAR_METRICS[col]
        vals = df[col].to_numpy(dtype=float)
        err = _yerr(df, col) if intervals and f"{col}_ci_low" in df.columns else None
        style_kw = dict(color=colour, label=lab, edgecolor="white", linewidth=0.5,
                        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.2"})
        if across:
            bars = ax.barh(x + off, vals, w, xerr=err, **style_kw)
        else:
            bars = ax.bar(x + off, vals, w, yerr=err, **style_kw)
        tops = vals if err is None else vals + np.nan_to_num(err[1])
        for b, v, t in zip(bars, vals, tops):
            if not np.isfinite(v):
                continue
            if across:
                ax.annotate(f"{v:.1f}", (t, b.get_y() + b.get_height() / 2), xytext=(2, 0), textcoords="offset points",
                            ha="left", va="center", fontsize=value_size)
            else:
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, t), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=value_size, rotation=90 if upright else 0)
    labels = df["label"].tolist()
    if across:
        ax.set_yticks(x, labels)
        ax.invert_yaxis()  # the table's order, top to bottom
        ticks = ax.get_yticklabels()
    else:
        ax.set_xticks(x, labels, rotation=35, ha="right")
        ticks = ax.get_xticklabels()
    for tick, variant in zip(ticks, df["variant"]):
        if variant == "upperson":
            tick.set_fontweight("bold")
    tops = list(metrics) + [f"{m}_ci_high" for m in metrics if intervals and f"{m}_ci_high" in df.columns]
    top = np.nanmax(df[tops].to_numpy(dtype=float)) if n else 1.0
    limit = (top if np.isfinite(top) and top > 0 else 1.0) * (1.2 if across or upright else 1.15)
    (ax.set_xlim if across else ax.set_ylim)(0, limit)
    (ax.set_xlabel if across else ax.set_ylabel)("score (%)")
    ax.grid(True, axis="x" if across else "y")
    ax.set_axisbelow(True)
    title = "Ablation: retrieval per variant (test split)"
    if across:
        fig.legend(frameon=False, ncol=min(len(metrics), 3), loc="outside lower center")
        fig.suptitle(style.wrap(title, layout.width - 0.2, 10), fontsize=10)  # centred on the figure, not the axes
    else:
        ax.legend(frameon=False, ncol=len(metrics), loc="upper left")
        ax.set_title(title)
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
    """(figure, caption) of :func:`plot_params`, unsaved. Each variant's name sits in a column right of
    the plot, joined to its point by a thin line (the points of the single components, the pairs and
    UP-Person lie close together: labels beside them would pile up); the legend is below the plot."""
    narrow = layout.narrow
    fig = style.figure(layout.width if narrow else 5.6, 5.0 if narrow else 4.0, layout="constrained")
    ax = fig.subplots()
    groups = list(dict.fromkeys(df["group"].tolist())) if "group" in df else ["other"]
    colours = dict(zip(groups, style.OKABE_ITO))
    trained = df[df["trainable_params"] > 0]
    intervals = has_intervals(df)
    handles = []
    for g in groups:
        sub = trained[trained["group"] == g] if "group" in trained else trained
        if len(sub):
            if intervals:
                ax.errorbar(sub["trainable_params"], sub["R1"], yerr=_yerr(sub, "R1"), fmt="none", ecolor=colours[g],
                            elinewidth=0.9, capsize=2.5, zorder=2)
            handles.append(ax.scatter(sub["trainable_params"], sub["R1"], marker=GROUP_MARKERS.get(g, "o"),
                                      s=70 if g == "full" else 36, color=colours[g], label=g, edgecolors="black",
                                      linewidths=0.4, zorder=3))
    for _, r in df[df["trainable_params"] <= 0].iterrows():
        handles.append(ax.axhline(r["R1"], color="0.4", ls="--", lw=0.9, label=f"{r['label']} (trains nothing)"))
        if intervals and np.isfinite(float(r.get("R1_ci_low", math.nan))):
            handles.append(ax.axhspan(float(r["R1_ci_low"]), float(r["R1_ci_high"]), color="0.4", alpha=0.12, lw=0,
                                      label=f"{r['label']}: 95 % interval"))
    if len(trained):
        ax.set_xscale("log")
        lo, hi = trained["trainable_params"].min(), trained["trainable_params"].max()
        ax.set_xlim(lo / 2.5, hi * 2.5)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("R@1 (%)")
    ax.grid(True, which="major")
    fig.legend(handles=handles, frameon=False, fontsize=8 if narrow else 7, loc="outside lower center",
               ncol=2 if narrow else 3)
    title = "Retrieval against trainable parameters"
    fig.suptitle(style.wrap(title, fig.get_size_inches()[0] - 0.2, 10) if narrow else title, fontsize=10)
    _label_column(fig, ax, trained, fontsize=8 if narrow else 7, wrap_at=1.0 if narrow else None)
    caption = ("Text-to-image R@1 (%) against the number of trainable parameters (log scale) for each variant, "
               "named in the column on the right; the dashed line is the zero-shot backbone, which trains "
               "nothing" + (", and the grey band around it its 95 % interval" if intervals else "") + "."
               + uncertainty_note(df).replace("error bars are", "vertical bars (and the grey band) are"))
    return fig, caption


def _label_column(fig, ax, rows: pd.DataFrame, *, fontsize: float, wrap_at=None) -> None:
    """Each row's label right of the axes, at its point's height where there is room, else moved apart
    just enough (in the order of the points), joined to its point by a thin grey line."""
    if not len(rows):
        return
    labels = [style.wrap(str(v), wrap_at, fontsize) if wrap_at else str(v) for v in rows["label"]]
    texts = [ax.text(1.04, 0.5, text, transform=ax.transAxes, ha="left", va="center", fontsize=fontsize)
             for text in labels]
    fig.draw_without_rendering()  # the constrained layout: the axes' real height, for the spacing
    axes_h = ax.get_position().height * fig.get_size_inches()[1] * 72  # points
    ax.set_ylim(*ax.get_ylim())  # fixed: the leader lines must not move the limits
    y0, y1 = ax.get_ylim()
    xs, ys = rows["trainable_params"].to_numpy(dtype=float), rows["R1"].to_numpy(dtype=float)
    heights = np.array([(t.count("\n") + 1) * fontsize * 1.3 / axes_h for t in labels])
    to_data = ax.transAxes + ax.transData.inverted()
    for text, x, y, pos in zip(texts, xs, ys, spread((ys - y0) / (y1 - y0), heights)):
        text.set_position((1.04, pos))
        end = to_data.transform((1.03, pos))
        ax.plot([x, end[0]], [y, end[1]], color="0.6", lw=0.6, clip_on=False, zorder=1, scalex=False, scaley=False)


def spread(targets: np.ndarray, heights: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Positions near ``targets`` (centres) with neighbours at least half their summed ``heights`` apart,
    inside [lo, hi] where they fit, in the targets' order."""
    order = np.argsort(targets, kind="stable")
    t, h = np.clip(targets[order], lo, hi), heights[order]
    pos = t.copy()
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + (h[i - 1] + h[i]) / 2)
    if len(pos) and pos[-1] + h[-1] / 2 > hi:
        pos[-1] = hi - h[-1] / 2
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - (h[i] + h[i + 1]) / 2)
    out = np.empty_like(pos)
    out[order] = pos
    return out


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
