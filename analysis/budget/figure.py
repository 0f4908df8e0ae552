"""The budget figure: trainable parameters (log) against R@1 with intervals, per domain; the
Pareto frontier marked, the paper's default highlighted, zero-shot as a reference line."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import LogLocator, NullFormatter

from analysis import figure_registry, style
from analysis.budget.table import IN_DOMAIN, pareto

DEFAULT_COLOUR = style.OKABE_ITO[1]
POINT_COLOUR = style.OKABE_ITO[0]
FULL_COLOUR = style.OKABE_ITO[3]


def example_table(points: int = 14, domains: tuple[str, ...] = (IN_DOMAIN, "cuhk"), seed: int = 0) -> pd.DataFrame:
    """A synthetic sweep table (the grid's points: PETL, one full fine-tune, zero-shot) for the figure checks."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(points):
        kind = "zero-shot" if i == points - 1 else "full" if i == points - 2 else "petl"
        params = 0 if kind == "zero-shot" else 1.5e8 if kind == "full" else float(rng.integers(2e4, 3e6))
        row = {"point": "zero-shot" if kind == "zero-shot" else "full-finetune" if kind == "full" else f"B{i + 1}",
               "kind": kind, "default": i == 1, "trainable_params": params, "seeds": 1 if kind == "zero-shot" else 2}
        for d in domains:
            v = 20.0 if kind == "zero-shot" else float(30 + 8 * np.log10(max(params, 1)) / 8 + rng.normal(0, 3))
            row.update({f"R1_{d}": v, f"R1_{d}_low": v - 2.5, f"R1_{d}_high": v + 2.5})
        rows.append(row)
    return pd.DataFrame(rows)


def _examples() -> list[figure_registry.Example]:
    three = (IN_DOMAIN, "cuhk", "icfg")
    return [figure_registry.Example("three domains", (example_table(domains=three), list(three))),
            figure_registry.Example("in-domain only", (example_table(6, (IN_DOMAIN,)), [IN_DOMAIN]))]


def _panel(ax, df: pd.DataFrame, domain: str, small: float) -> None:
    col = f"R1_{domain}"
    for _, r in df[df["kind"] == "zero-shot"].iterrows():
        ax.axhspan(r[f"{col}_low"], r[f"{col}_high"], color="0.88", lw=0)
        ax.axhline(r[col], color="0.4", ls="--", lw=0.9, label="zero-shot (0 trained)")
    front = pareto(df["trainable_params"].tolist(), df[col].tolist())
    pts = df.assign(front=front)[df["kind"] != "zero-shot"].sort_values("trainable_params")
    for _, r in pts.iterrows():
        x, y = float(r["trainable_params"]), float(r[col])
        err = np.array([[y - r[f"{col}_low"]], [r[f"{col}_high"] - y]])
        if r["kind"] == "full":
            kw = dict(marker="s", color=FULL_COLOUR, ms=5, label="full fine-tune")
        elif r["default"]:
            kw = dict(marker="*", color=DEFAULT_COLOUR, ms=11, label="paper's default", zorder=4)
        else:
            kw = dict(marker="o", color=POINT_COLOUR, ms=4, label="PETL configuration")
        ax.errorbar([x], [y], yerr=err, ls="none", capsize=2, elinewidth=0.8, **kw)
        if r["front"] or r["default"]:  # the others: budget.csv and the app's point view
            # the frontier's names above left of their points, the default's below right (off the frontier's)
            where = dict(xytext=(5, -5), ha="left", va="top") if r["default"] else dict(xytext=(-4, 4), ha="right")
            ax.annotate(str(r["point"]), (x, y), textcoords="offset points", fontsize=small, color="0.2", **where)
    line = pts[pts["front"]]
    if len(line):
        ax.plot(line["trainable_params"], line[col], color="0.15", lw=0.9, zorder=3, label="Pareto frontier")
    ax.set_xscale("log")
    xs = pts.loc[pts["trainable_params"] > 0, "trainable_params"].astype(float)
    if len(xs):  # whole decades, labelled at the powers of ten only: a shorter range labelled every minor tick
        lo, hi = np.floor(np.log10(xs.min()) - 0.05), np.ceil(np.log10(xs.max()) + 0.05)
        ax.set_xlim(10**lo, 10**hi)
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title("in-domain" if domain == IN_DOMAIN else f"target {domain}", fontsize=9)


@figure_registry.register(examples=_examples)
def budget_figure(df: pd.DataFrame, domains: list[str], *, layout: style.Layout = style.PAPER):
    """(figure, caption) of the sweep's table (the CLI saves it; the app can show it). On a narrow
    layout the panels are stacked, one a row, and the small text is >= 9 px on the screen."""
    n = len(domains)
    narrow = layout.narrow
    small = 7.5 if narrow else 6  # the point names and the legend
    if narrow:
        fig = style.figure(layout.width, 2.6 * n + 1.1, layout="constrained")
        axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    else:
        fig = style.figure(layout.fit(3.2 * n + 0.4), 3.4, layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    for ax, d in zip(axes, domains):
        _panel(ax, df, d, small)
        if narrow:
            ax.set_ylabel("R@1 (%)")
    if narrow:
        for ax in axes[:-1]:
            ax.set_xlabel("")
    else:
        axes[0].set_ylabel("R@1 (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    fig.legend(seen.values(), seen.keys(), loc="outside lower center", ncols=2 if fig.get_size_inches()[0] < 5 else min(4, len(seen)),
               frameon=False, fontsize=7.5 if narrow else 7)
    fig.suptitle("R@1 against the PETL budget", fontsize=10)
    seeds = sorted(set(int(s) for s in df["seeds"])) if len(df) else []
    caption = ("R@1 against the number of trainable parameters (log scale), one panel per test domain; bars: 95 % "
               "bootstrap intervals over test queries of the seed-averaged model "
               f"({'/'.join(map(str, seeds)) or '0'} seeds per point). The line joins each panel's Pareto frontier "
               "(no other point has at most as many parameters and a higher R@1), whose points are named; the star "
               "is the paper's default configuration; the dashed line and grey band are zero-shot.")
    return fig, caption


def save_budget_figure(df: pd.DataFrame, domains: list[str], out_dir) -> style.FigureRecord:
    fig, caption = budget_figure(df, domains)
    return style.save(fig, out_dir, "budget", caption)
