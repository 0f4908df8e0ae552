"""The budget table: one row per point, exact parameter counts, R@1 and mAP per domain with intervals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis import per_query_cache
from analysis.budget.sweep import PlannedRun, Target, per_query_name
from upperson import stats
from upperson.io import atomic_write_bytes, atomic_write_text

METRICS = ("R1", "mAP")
IN_DOMAIN = "in"  # the column suffix of the source's own test split


def domains_of(targets: Sequence[Target]) -> list[str]:
    return [IN_DOMAIN] + [t.name for t in targets]


def metric_columns(domains: Sequence[str]) -> list[str]:
    return [f"{m}_{d}{s}" for d in domains for m in METRICS for s in ("", "_low", "_high", "_std")] + \
        [f"queries_{d}" for d in domains]


def columns(targets: Sequence[Target]) -> list[str]:
    return ["point", "label", "kind", "default", "overrides", "trainable_params", "total_params",
            "trainable_percent", "seeds", *metric_columns(domains_of(targets)), "pareto"]


def _file(run_dir: Path, domain: str) -> Path:
    return Path(run_dir) / per_query_name("test" if domain == IN_DOMAIN else domain)


def collect(jobs: Sequence[PlannedRun], targets: Sequence[Target], *, resamples: int = stats.DEFAULT_RESAMPLES,
            ci_seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """One row per point with complete runs (mean over seeds; 95 % bootstrap over queries of the
    seed-averaged per-query values, ``upperson.stats.combine_seeds``; the across-seed std)."""
    rows = []
    by_point: dict[str, list[PlannedRun]] = {}
    for j in jobs:
        by_point.setdefault(j.point.name, []).append(j)
    for name, runs in by_point.items():
        done = [j for j in runs if all(_file(j.run_dir, d).exists() for d in domains_of(targets))]
        if not done:
            continue
        p = done[0].point
        row = {"point": name, "label": p.label, "kind": p.kind, "default": p.default,
               "overrides": " ".join(p.overrides) or "(none)", "trainable_params": done[0].trainable,
               "total_params": done[0].total, "trainable_percent": 100.0 * done[0].trainable / max(1, done[0].total),
               "seeds": len(done)}
        for d in domains_of(targets):
            files = [per_query_cache.read_with_sidecar(_file(j.run_dir, d)) for j in done]  # checked, read once
            stats.aligned(files)
            comb = stats.combine_seeds([f.values() for f in files], keys=list(METRICS), resamples=resamples,
                                       seed=ci_seed)
            for m in METRICS:
                c = comb["metrics"][m]
                row.update({f"{m}_{d}": c["mean"], f"{m}_{d}_low": c["low"], f"{m}_{d}_high": c["high"],
                            f"{m}_{d}_std": c["std"]})
            row[f"queries_{d}"] = comb["queries"]
        rows.append(row)
    df = pd.DataFrame(rows, columns=columns(targets))
    df["pareto"] = pareto(df["trainable_params"].tolist(), df[f"R1_{IN_DOMAIN}"].tolist()) if len(df) else []
    return df


def pareto(params: Sequence[float], scores: Sequence[float]) -> list[bool]:
    """Whether each point is on the frontier: no other point has at most its parameters and at
    least its score, one of them strictly."""
    out = []
    for i, (p, s) in enumerate(zip(params, scores)):
        if not math.isfinite(s):
            out.append(False)
            continue
        out.append(not any(j != i and q <= p and t >= s and (q < p or t > s)
                           for j, (q, t) in enumerate(zip(params, scores)) if math.isfinite(t)))
    return out


def write_table(df: pd.DataFrame, out_dir: Path) -> Path:
    path = Path(out_dir) / "budget.csv"
    atomic_write_text(path, df.to_csv(index=False))
    return path


def copy_per_query(jobs: Sequence[PlannedRun], targets: Sequence[Target], out_dir: Path) -> int:
    """Every complete run's per-query files into ``out_dir/per_query/<point>/seed-<s>/<domain>.csv.gz``: the
    bytes checked against each file's record are the bytes written."""
    n = 0
    for j in jobs:
        for d in domains_of(targets):
            src = _file(j.run_dir, d)
            if src.exists():
                dst = Path(out_dir) / "per_query" / j.point.name / f"seed-{j.seed}" / f"{d}.csv.gz"
                atomic_write_bytes(dst, per_query_cache.checked_bytes(src))
                n += 1
    return n
