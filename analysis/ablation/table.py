"""The ablation table, collected from the run folders, with its statistics (docs/statistics.md)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from analysis import per_query_cache
from analysis.ablation.runs import PER_QUERY_NAME, seed_runs
from analysis.ablation.study import VARIANT_NAMES, VARIANTS, Variant
from upperson import stats
from upperson.train.run import RESULTS_NAME

log = logging.getLogger(__name__)

COLUMNS = ["variant", "label", "group", "prefix", "lora", "adapter", "prefix_scaled", "adapter_placement",
           "freeze_backbone", "R1", "R5", "R10", "mAP", "mINP", "eval_split", "trainable_params", "total_params",
           "trainable_percent", "train_time_s", "epochs", "best_epoch", "run_dir"]
#: uncertainty columns (docs/statistics.md); empty where no per-query results exist
STAT_COLUMNS = ["seeds", "R1_std", "R1_ci_low", "R1_ci_high", "mAP_std", "mAP_ci_low", "mAP_ci_high",
                "R1_diff_vs_upperson", "R1_diff_ci_low", "R1_diff_ci_high", "R1_diff_significant",
                "ci_resamples", "ci_seed"]
COLUMNS = COLUMNS[:-1] + STAT_COLUMNS + COLUMNS[-1:]
REFERENCE = "upperson"
#: a per-query file: its path, or its contents already read and checked
PerQuery = Union[Path, stats.PerQueryFile]


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


def _combined_row(runs: Sequence[Path], variant: Optional[Variant], per_query_file: str = PER_QUERY_NAME,
                  target: Optional[str] = None) -> tuple[Optional[dict], list[PerQuery]]:
    """One row for the seeds of a variant: metrics and time are means over seeds; the
    per-query files (``per_query_file`` in each run) are returned when every seed has one. With a
    ``target`` the metrics are those of the per-query files (the target's test split), each
    checked against its record and returned as read; a variant with a seed lacking its file is
    left out (None)."""
    rows = [row_from_run(d, variant) for d in runs]
    files = [Path(d) / per_query_file for d in runs]
    read: list[stats.PerQueryFile] = []
    if target is not None:
        if not all(f.is_file() for f in files):
            return None, []
        read = [per_query_cache.read_with_sidecar(f) for f in files]  # checked against its record, read once
        for r, f in zip(rows, read):
            r.update(f.metrics())
            r["eval_split"] = f"test ({target})"
    row = dict(rows[0])
    if variant is None:
        row["variant"] = row["label"] = Path(runs[0]).name if len(runs) == 1 else Path(runs[0]).parent.name
    for c in _MEAN_COLUMNS:
        row[c] = float(np.mean([r[c] for r in rows]))
    row["seeds"] = len(rows)
    for c in ("R1", "mAP"):
        row[f"{c}_std"] = float(np.std([r[c] for r in rows], ddof=1)) if len(rows) > 1 else math.nan
    if read:
        return row, read
    return row, (files if all(f.is_file() for f in files) else [])


def collect(runs_dir: Path, variants: Optional[Sequence[Variant]] = None, *, include_other: bool = True,
            resamples: int = stats.DEFAULT_RESAMPLES, ci_seed: int = stats.DEFAULT_SEED,
            per_query_file: str = PER_QUERY_NAME, target: Optional[str] = None) -> pd.DataFrame:
    """The table from the run folders under ``runs_dir`` (every seed of each variant), with the
    statistics of :func:`add_statistics`; missing variants are left out (logged). ``target``: the
    table of the runs' per-query files ``per_query_file`` on that target's test split
    (:mod:`analysis.ablation.targets`).

    ``df.attrs["per_query"]`` maps each variant to its runs' per-query files (when complete).
    """
    runs_dir = Path(runs_dir)
    variants = list(variants) if variants is not None else list(VARIANTS)
    rows, missing, per_query = [], [], {}
    for v in variants:
        runs = seed_runs(runs_dir / v.name)
        row, files = _combined_row(runs, v, per_query_file, target) if runs else (None, [])
        if row is None:
            missing.append(v.name)
            continue
        rows.append(row)
        if files:
            per_query[v.name] = files
    if include_other and runs_dir.is_dir():
        known = set(VARIANT_NAMES)
        for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and p.name not in known):
            runs = seed_runs(d)
            row, files = _combined_row(runs, None, per_query_file, target) if runs else (None, [])
            if row is not None:
                rows.append(row)
                if files:
                    per_query[row["variant"]] = files
    if missing:
        log.warning("no complete run in %s for: %s", runs_dir, ", ".join(missing))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return add_statistics(df, per_query, resamples=resamples, seed=ci_seed)


def add_statistics(df: pd.DataFrame, per_query: dict[str, Sequence[PerQuery]], *,
                   resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """Fill the uncertainty columns from per-query files (``{variant: [one CSV per seed]}``).

    A file already read (a ``PerQueryFile``) is used as it is. Per variant: R1 and mAP intervals by bootstrap over queries of the per-query values
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
        read = [f if isinstance(f, stats.PerQueryFile) else stats.read_per_query_csv(f) for f in files]
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
    df.attrs["per_query"] = {k: [Path(f.path) if isinstance(f, stats.PerQueryFile) else Path(f) for f in v]
                             for k, v in per_query.items()}
    return df


def has_intervals(df: pd.DataFrame) -> bool:
    """Whether the table carries bootstrap intervals (tables of older sweeps do not)."""
    return "R1_ci_low" in df.columns and bool(pd.to_numeric(df["R1_ci_low"], errors="coerce").notna().any())
