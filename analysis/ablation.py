"""The per-component ablation: variants as data, a sweep that trains them, a table, figures.

Each variant is a list of config overrides on a base preset (default ``toypedes``). The
sweep trains each variant for ``seeds`` seeds (``train.seed`` = the base config's seed, +1,
...) into ``<runs-dir>/<variant>/seed-<s>/`` with ``upperson.train.train`` (zero-shot:
``train.epochs=0``, i.e. evaluation only, one seed: it is deterministic), skipping run
folders that are complete (``results.json`` written by the trainer) and resuming those that
are not. Each run's selected checkpoint is evaluated once more on the test split, query by
query, into ``per_query_test.csv`` (``upperson.stats``), so that the statistics are rebuilt
from files, never by training again. The table is collected from the run folders: test
metrics (mean over seeds), the across-seed std, 95 % bootstrap intervals over queries and the
paired difference to UP-Person (docs/statistics.md), trainable parameters and training time.
A run folder of the older layout (``<runs-dir>/<variant>/results.json``) counts as one seed.

Outputs in ``--out``: ``ablation.csv``, ``ablation_bars.{png,svg}``,
``ablation_params.{png,svg}``, ``ablation_curves.{png,svg}``, ``curves/<variant>.jsonl``
(each run's per-epoch log, first seed), ``per_query/<variant>/seed-<i>.csv`` (each run's
per-query results) and ``README.md`` (the exact command, the table and the significance of
each difference to UP-Person).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from analysis import style
from upperson.config import ExperimentConfig, load_config, to_dict
from upperson import stats
from upperson.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

PREFIX_OFF = "model.prefix.enabled=false"
LORA_OFF = "model.lora.enabled=false"
ADAPTER_OFF = "model.adapter.enabled=false"
ALL_OFF = (PREFIX_OFF, LORA_OFF, ADAPTER_OFF)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: config overrides applied on top of the base preset."""

    name: str
    overrides: tuple[str, ...]
    label: str
    group: str  # baseline | single | pair | full | design
    description: str
    train: bool = True
    compare_to: Optional[str] = None


#: The study, in table order. Change the study here, not in code.
VARIANTS: tuple[Variant, ...] = (
    Variant("zero-shot", ALL_OFF + ("train.epochs=0",), "Zero-shot", "baseline",
            "frozen backbone, no component, no training", train=False),
    Variant("prefix-only", (LORA_OFF, ADAPTER_OFF), "Prefix", "single", "S-Prefix alone"),
    Variant("lora-only", (PREFIX_OFF, ADAPTER_OFF), "LoRA", "single", "LoRA on K and V alone"),
    Variant("adapter-only", (PREFIX_OFF, LORA_OFF), "Adapter", "single", "L-Adapter alone"),
    Variant("prefix+lora", (ADAPTER_OFF,), "Prefix+LoRA", "pair", "S-Prefix and LoRA"),
    Variant("prefix+adapter", (LORA_OFF,), "Prefix+Adapter", "pair", "S-Prefix and L-Adapter"),
    Variant("lora+adapter", (PREFIX_OFF,), "LoRA+Adapter", "pair", "LoRA and L-Adapter"),
    Variant("upperson", (), "UP-Person", "full", "S-Prefix + LoRA + L-Adapter (all three)"),
    Variant("vanilla-prefix", ("model.prefix.scaled=false",), "UP-Person, vanilla prefix", "design",
            "UP-Person with a vanilla prefix (lambda fixed at 1) instead of S-Prefix", compare_to="upperson"),
    Variant("sequential-adapter", ("model.adapter.placement=sequential",), "UP-Person, sequential adapter", "design",
            "UP-Person with sequential (Houlsby-style) adapters instead of L-Adapter", compare_to="upperson"),
    Variant("full-finetune", ALL_OFF + ("model.freeze_backbone=false", "train.backbone_lr=1.0e-4", "train.eps=1.0e-6"), "Full fine-tune",
            "baseline", "every backbone weight trains (lr 1e-4, eps 1e-6, as preset toypedes-full-finetune), no component"),
    Variant("ln-tuning", ALL_OFF + ("model.ln_tuning.enabled=true",), "LN-tuning", "baseline",
            "only the blocks' LayerNorm affine parameters train (upperson/petl/ln_tuning), no other component"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)

COLUMNS = ["variant", "label", "group", "prefix", "lora", "adapter", "prefix_scaled", "adapter_placement",
           "freeze_backbone", "R1", "R5", "R10", "mAP", "mINP", "eval_split", "trainable_params", "total_params",
           "trainable_percent", "train_time_s", "epochs", "best_epoch", "run_dir"]
#: uncertainty columns (docs/statistics.md); empty where no per-query results exist
STAT_COLUMNS = ["seeds", "R1_std", "R1_ci_low", "R1_ci_high", "mAP_std", "mAP_ci_low", "mAP_ci_high",
                "R1_diff_vs_upperson", "R1_diff_ci_low", "R1_diff_ci_high", "R1_diff_significant",
                "ci_resamples", "ci_seed"]
COLUMNS = COLUMNS[:-1] + STAT_COLUMNS + COLUMNS[-1:]
REFERENCE = "upperson"

RESULTS_NAME = "results.json"
PER_QUERY_NAME = "per_query_test.csv"
PER_QUERY_DIR = "per_query"
TrainFn = Callable[..., dict]


def get_variants(names: Optional[Sequence[str]] = None) -> list[Variant]:
    """The variants named (all by default), in table order; unknown names are an error."""
    if not names:
        return list(VARIANTS)
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANTS if v.name in set(names)]


def variant_config(variant: Variant, base: str = "toypedes", *, overrides: Sequence[str] = (),
                   epochs: Optional[int] = None, data_root: Optional[str] = None,
                   dataset: Optional[str] = None, seed: Optional[int] = None) -> ExperimentConfig:
    """The base preset with the user's overrides, then the variant's (the variant wins)."""
    items = list(overrides)
    if epochs is not None and variant.train:
        items.append(f"train.epochs={int(epochs)}")
    if seed is not None:
        items.append(f"train.seed={int(seed)}")
    items += list(variant.overrides)
    if data_root is not None:
        items.append(f"data.root={json.dumps(str(data_root))}")
    if dataset is not None:
        items.append(f"data.dataset={dataset}")
    return load_config(base, items)


def _plain(obj) -> object:
    return json.loads(json.dumps(obj))


def run_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / RESULTS_NAME).exists()


def _default_train_fn() -> TrainFn:
    from upperson.train import train

    return train


def write_run_per_query(cfg: ExperimentConfig, run_dir: Path, *, progress: bool = False) -> Path:
    """Evaluate a complete run's selected checkpoint (``best/``) on the test split, query by
    query, into ``run_dir/per_query_test.csv`` (as the trainer evaluates: same precision)."""
    from upperson.data import build_tokenizer, load_dataset
    from upperson.evaluation import evaluate_per_query
    from upperson.model.checkpoint import load_model

    run_dir = Path(run_dir)
    model = load_model(run_dir / "best")
    data = load_dataset(cfg.data.dataset, cfg.data.root)
    res = evaluate_per_query(model, data.split("test"), build_tokenizer(model.config.name),
                             batch_size=cfg.data.eval_batch_size, precision=cfg.train.precision, progress=progress)
    path = run_dir / PER_QUERY_NAME
    stats.write_per_query_csv(path, res.rows())
    return path


def _ensure_per_query(cfg: ExperimentConfig, run_dir: Path, progress: bool) -> None:
    if not (run_dir / PER_QUERY_NAME).exists():
        log.info("per-query test results of %s", run_dir)
        write_run_per_query(cfg, run_dir, progress=progress)


def run_variant(variant: Variant, cfg: ExperimentConfig, run_dir: Path, *, train_fn: Optional[TrainFn] = None,
                force: bool = False, progress: bool = True) -> Path:
    """Train one variant into ``run_dir``, unless a complete run of the same config is there;
    then make sure the run has its per-query test results (an evaluation, no training)."""
    run_dir = Path(run_dir)
    planned = _plain(to_dict(cfg))
    if run_complete(run_dir) and not force:
        done = json.loads((run_dir / RESULTS_NAME).read_text())
        if done.get("config") == planned:
            log.info("%s: complete run in %s, skipped", variant.name, run_dir)
            _ensure_per_query(cfg, run_dir, progress)
            return run_dir
        raise ValueError(f"{run_dir} holds a complete run of {variant.name!r} with a different config; "
                         "pass --force to train it again, or choose another --runs-dir")
    if force and run_dir.exists():
        log.info("%s: --force, removing %s", variant.name, run_dir)
        shutil.rmtree(run_dir)
    resume = (run_dir / "config.yaml").exists()
    train_fn = train_fn or _default_train_fn()
    log.info("%s: %s %s (%s)", variant.name, "resuming" if resume else "training", run_dir, variant.description)
    t0 = time.time()
    train_fn(cfg, run_dir, resume=resume, progress=progress)
    if not run_complete(run_dir):
        raise RuntimeError(f"{variant.name}: training finished but wrote no {RESULTS_NAME} in {run_dir}")
    _ensure_per_query(cfg, run_dir, progress)
    log.info("%s: done in %.0f s", variant.name, time.time() - t0)
    return run_dir


def seed_runs(variant_dir: Path) -> list[Path]:
    """The complete runs of one variant: ``seed-<s>/`` folders in seed order, or the folder
    itself (older layout, one seed)."""
    variant_dir = Path(variant_dir)
    if run_complete(variant_dir):
        return [variant_dir]
    if not variant_dir.is_dir():
        return []
    found = []
    for d in variant_dir.glob("seed-*"):
        try:
            found.append((int(d.name[len("seed-"):]), d))
        except ValueError:
            continue
    return [d for _, d in sorted(found) if run_complete(d)]


def row_from_run(run_dir: Path, variant: Optional[Variant] = None) -> dict:
    """One table row from a run folder's ``results.json``."""
    run_dir = Path(run_dir)
    res = json.loads((run_dir / RESULTS_NAME).read_text())
    metrics = res.get("metrics", {})
    split = "test" if "test" in metrics else res.get("selected_on", next(iter(metrics), ""))
    m = metrics.get(split, {})
    model = res.get("config", {}).get("model", {})
    params = res.get("parameters", {})
    name = variant.name if variant else run_dir.name
    return {
        "variant": name,
        "label": variant.label if variant else name,
        "group": variant.group if variant else "other",
        "prefix": bool(model.get("prefix", {}).get("enabled", False)),
        "lora": bool(model.get("lora", {}).get("enabled", False)),
        "adapter": bool(model.get("adapter", {}).get("enabled", False)),
        "prefix_scaled": bool(model.get("prefix", {}).get("scaled", False)) and bool(model.get("prefix", {}).get("enabled")),
        "adapter_placement": model.get("adapter", {}).get("placement", "") if model.get("adapter", {}).get("enabled") else "",
        "freeze_backbone": bool(model.get("freeze_backbone", True)),
        **{k: float(m.get(k, math.nan)) for k in ("R1", "R5", "R10", "mAP", "mINP")},
        "eval_split": split,
        "trainable_params": int(params.get("trainable", 0)),
        "total_params": int(params.get("total", 0)),
        "trainable_percent": float(params.get("percent", math.nan)),
        "train_time_s": float(res.get("train_time_s", 0.0)),
        "epochs": int(res.get("config", {}).get("train", {}).get("epochs", 0)),
        "best_epoch": int(res.get("best_epoch", -1)),
        "run_dir": str(run_dir),
    }


_MEAN_COLUMNS = ("R1", "R5", "R10", "mAP", "mINP", "train_time_s")


def _combined_row(runs: Sequence[Path], variant: Optional[Variant]) -> tuple[dict, list[Path]]:
    """One row for the seeds of a variant: metrics and time are means over seeds; the
    per-query files are returned when every seed has one."""
    rows = [row_from_run(d, variant) for d in runs]
    row = dict(rows[0])
    if variant is None:
        row["variant"] = row["label"] = Path(runs[0]).name if len(runs) == 1 else Path(runs[0]).parent.name
    for c in _MEAN_COLUMNS:
        row[c] = float(np.mean([r[c] for r in rows]))
    row["seeds"] = len(rows)
    for c in ("R1", "mAP"):
        row[f"{c}_std"] = float(np.std([r[c] for r in rows], ddof=1)) if len(rows) > 1 else math.nan
    files = [Path(d) / PER_QUERY_NAME for d in runs]
    return row, (files if all(f.is_file() for f in files) else [])


def collect(runs_dir: Path, variants: Optional[Sequence[Variant]] = None, *, include_other: bool = True,
            resamples: int = stats.DEFAULT_RESAMPLES, ci_seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """The table from the run folders under ``runs_dir`` (every seed of each variant), with the
    statistics of :func:`add_statistics`; missing variants are left out (logged).

    ``df.attrs["per_query"]`` maps each variant to its runs' per-query files (when complete).
    """
    runs_dir = Path(runs_dir)
    variants = list(variants) if variants is not None else list(VARIANTS)
    rows, missing, per_query = [], [], {}
    for v in variants:
        runs = seed_runs(runs_dir / v.name)
        if runs:
            row, files = _combined_row(runs, v)
            rows.append(row)
            if files:
                per_query[v.name] = files
        else:
            missing.append(v.name)
    if include_other and runs_dir.is_dir():
        known = set(VARIANT_NAMES)
        for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and p.name not in known):
            runs = seed_runs(d)
            if runs:
                row, files = _combined_row(runs, None)
                rows.append(row)
                if files:
                    per_query[row["variant"]] = files
    if missing:
        log.warning("no complete run in %s for: %s", runs_dir, ", ".join(missing))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return add_statistics(df, per_query, resamples=resamples, seed=ci_seed)


def add_statistics(df: pd.DataFrame, per_query: dict[str, Sequence[Path]], *,
                   resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """Fill the uncertainty columns from per-query files (``{variant: [one CSV per seed]}``).

    Per variant: R1 and mAP intervals by bootstrap over queries of the per-query values
    averaged over seeds; against the ``upperson`` row, the paired bootstrap of the R1
    difference (the same resampled queries for both). Rows without per-query files keep
    empty intervals: nothing is made up. Every file must list the same queries.
    """
    df = df.copy()
    for c in STAT_COLUMNS:
        if c not in df.columns:
            df[c] = math.nan
    df["R1_diff_significant"] = df["R1_diff_significant"].astype(object)
    averaged = {}
    first = None
    for name, files in per_query.items():
        read = [stats.read_per_query_csv(f) for f in files]
        try:
            stats.aligned(read if first is None else [first, *read])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        first = first or read[0]
        averaged[name] = stats.average_over_seeds([r.values() for r in read])
    ref = averaged.get(REFERENCE)
    for i, row in df.iterrows():
        name = row["variant"]
        if name not in averaged:
            continue
        values = averaged[name]
        ci = stats.bootstrap_ci(values, keys=["R1", "mAP"], resamples=resamples, seed=seed)["metrics"]
        df.at[i, "R1_ci_low"], df.at[i, "R1_ci_high"] = ci["R1"]["low"], ci["R1"]["high"]
        df.at[i, "mAP_ci_low"], df.at[i, "mAP_ci_high"] = ci["mAP"]["low"], ci["mAP"]["high"]
        df.at[i, "ci_resamples"], df.at[i, "ci_seed"] = resamples, seed
        if ref is not None:
            d = stats.paired_bootstrap(values, ref, keys=["R1"], resamples=resamples, seed=seed)["metrics"]["R1"]
            df.at[i, "R1_diff_vs_upperson"] = d["diff"]
            df.at[i, "R1_diff_ci_low"], df.at[i, "R1_diff_ci_high"] = d["low"], d["high"]
            df.at[i, "R1_diff_significant"] = d["significant"]
    for c in ("seeds", "ci_resamples", "ci_seed"):
        df[c] = pd.to_numeric(df[c], errors="coerce").round().astype("Int64")
    df.attrs["per_query"] = {k: [Path(f) for f in v] for k, v in per_query.items()}
    return df


def has_intervals(df: pd.DataFrame) -> bool:
    """Whether the table carries bootstrap intervals (tables of older sweeps do not)."""
    return "R1_ci_low" in df.columns and bool(pd.to_numeric(df["R1_ci_low"], errors="coerce").notna().any())


def copy_per_query(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Copy each run's per-query file to ``out_dir/per_query/<variant>/seed-<i>.csv`` (shippable;
    :func:`per_query_in` reads them back)."""
    copied = []
    for name, files in df.attrs.get("per_query", {}).items():
        for i, src in enumerate(files):
            dst = Path(out_dir) / PER_QUERY_DIR / name / f"seed-{i}.csv"
            if Path(src).resolve() == dst.resolve():
                continue
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            copied.append(dst)
    return copied


def per_query_in(folder: Path) -> dict[str, list[Path]]:
    """``{variant: [seed files]}`` from a ``per_query/`` folder written by :func:`copy_per_query`."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {d.name: sorted(d.glob("seed-*.csv"), key=lambda p: int(p.stem[len("seed-"):]))
            for d in sorted(folder.iterdir()) if d.is_dir() and any(d.glob("seed-*.csv"))}


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = [c for c in ("variant", "R1", "mAP", "trainable_params", "train_time_s") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not an ablation table (missing columns {missing})")
    if "label" not in df.columns:
        df["label"] = df["variant"]
    return df


def read_table(path: Path, *, resamples: int = stats.DEFAULT_RESAMPLES, ci_seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """:func:`read_csv`, with the statistics recomputed from the ``per_query/`` folder beside it
    when there is one (a shipped study's intervals are rebuilt from its files). A table of an
    older sweep, without per-query files, reads as it is: no interval is made up."""
    df = read_csv(path)
    files = per_query_in(Path(path).parent / PER_QUERY_DIR)
    if files:
        df = add_statistics(df, files, resamples=resamples, seed=ci_seed)
    return df


def copy_curves(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Copy each run's ``metrics.jsonl`` to ``out_dir/curves/<variant>.jsonl`` (small, shippable)."""
    copied = []
    for _, row in df.iterrows():
        src = Path(str(row.get("run_dir", ""))) / "metrics.jsonl"
        if src.is_file() and src.stat().st_size > 0:
            dst = Path(out_dir) / "curves" / f"{row['variant']}.jsonl"
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            copied.append(dst)
    return copied


# ----------------------------------------------------------------------------- figures


#: metrics the bars can show (column -> label); the CLI draws R1 and mAP, the demo lets one choose
BAR_METRICS = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "mAP": "mAP", "mINP": "mINP"}


def plot_bars(df: pd.DataFrame, out_dir: Path, *, name: str = "ablation_bars") -> style.FigureRecord:
    """Grouped bars: R@1 and mAP per variant (saved)."""
    fig, caption = bars_figure(df)
    return style.save(fig, out_dir, name, caption)


def bars_figure(df: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP")):
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
               "vanilla prefix or sequential adapters, and a full fine-tune." + _uncertainty_note(df))
    return fig, caption


def _yerr(df: pd.DataFrame, col: str) -> np.ndarray:
    """(2, n) distances from each value to its interval's ends (NaN where there is none)."""
    v = df[col].to_numpy(dtype=float)
    lo = pd.to_numeric(df[f"{col}_ci_low"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(df[f"{col}_ci_high"], errors="coerce").to_numpy(dtype=float)
    return np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])


def _uncertainty_note(df: pd.DataFrame) -> str:
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


def params_figure(df: pd.DataFrame):
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
               "the dashed line is the zero-shot backbone, which trains nothing." + _uncertainty_note(df)
               .replace("error bars are", "vertical bars (and the band around the dashed line) are"))
    return fig, caption


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


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_readme(out_dir: Path, df: pd.DataFrame, figures: Sequence[style.FigureRecord], *, command: str,
                 details: dict) -> Path:
    """``README.md``: the command that made this folder, the setting and the table."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Ablation of UP-Person's components",
        "",
        "Made by:",
        "",
        "```",
        command,
        "```",
        "",
        f"on {now}, commit {_git_commit()}.",
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
        lines += ["Uncertainty and differences to UP-Person (R@1, percent points):" + _uncertainty_note(df)
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


@dataclass
class SweepPlan:
    base: str = "toypedes"
    overrides: list[str] = field(default_factory=list)
    epochs: Optional[int] = None
    data_root: Optional[str] = None
    dataset: Optional[str] = None
    seeds: int = 3  # training seeds per trained variant: the base config's train.seed, +1, ...


def sweep(variants: Sequence[Variant], plan: SweepPlan, runs_dir: Path, *, train_fn: Optional[TrainFn] = None,
          force: bool = False, progress: bool = True) -> list[Path]:
    """Train (or skip, or resume) every variant for every seed into
    ``runs_dir/<variant>/seed-<s>/``; returns the run folders in order."""
    from tqdm.auto import tqdm

    if plan.seeds < 1:
        raise ValueError(f"--seeds {plan.seeds}: give at least one seed")
    base_seed = load_config(plan.base, list(plan.overrides)).train.seed
    # every config first, so that a bad override fails before hours of training, not after
    jobs = []
    for v in variants:
        for seed in range(base_seed, base_seed + (plan.seeds if v.train else 1)):
            cfg = variant_config(v, plan.base, overrides=plan.overrides, epochs=plan.epochs, data_root=plan.data_root,
                                 dataset=plan.dataset, seed=seed)
            jobs.append((v, cfg, Path(runs_dir) / v.name / f"seed-{seed}"))
    done = []
    for v, cfg, run_dir in tqdm(jobs, desc="ablation", unit="run", disable=not progress):
        done.append(run_variant(v, cfg, run_dir, train_fn=train_fn, force=force, progress=progress))
    return done


def ablation_figures(df: pd.DataFrame, out_dir: Path) -> list[style.FigureRecord]:
    """The table's figures (and the training curves of the runs it names, when they exist)."""
    if df.empty:
        raise ValueError("the ablation table is empty: no variant has a complete run")
    figs = [plot_bars(df, out_dir), plot_params(df, out_dir)]
    curves_dir = Path(out_dir) / "curves"
    if curves_dir.is_dir() and any(curves_dir.glob("*.jsonl")):
        from analysis.curves import curves_figure, read_runs

        order = {n: i for i, n in enumerate(df["variant"])}
        files = sorted(curves_dir.glob("*.jsonl"), key=lambda p: order.get(p.stem, len(order)))
        labels = dict(zip(df["variant"], df["label"]))
        runs = read_runs(files, labels={p.stem: labels.get(p.stem, p.stem) for p in files})
        if runs:
            figs.append(curves_figure(runs, out_dir, name="ablation_curves",
                                      title="Ablation: training curves per variant"))
    return figs
