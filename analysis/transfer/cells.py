"""The transfer matrix: every run evaluated query by query on its cells' test splits, then each
cell's metrics with bootstrap intervals, the paired difference UP-Person - full fine-tune per
cell, and the in-domain against cross-domain gap (docs/transfer.md defines each)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from analysis import per_query_cache
from analysis.transfer.domains import Domain
from analysis.transfer.plan import FULL, LABELS, METHODS, UPPERSON, StudyRun
from upperson import stats
from upperson.data import build_tokenizer, load_dataset
from upperson.evaluation import evaluate_per_query
from upperson.io import atomic_write_json
from upperson.model.checkpoint import load_model
from upperson.train.run import Run

log = logging.getLogger(__name__)

PER_QUERY_DIR = "per_query"
#: what each per-query file was evaluated from (its cell's key) and its SHA-256: a rerun reuses a file
#: only while both still match
CELLS_MANIFEST = Path(PER_QUERY_DIR) / "cells.json"
CELL_METRICS = ("R1", "mAP")
COLUMNS = ["method", "label", "source", "target", "in_domain", "seeds", "queries",
           "R1", "R1_ci_low", "R1_ci_high", "mAP", "mAP_ci_low", "mAP_ci_high",
           "R1_diff", "R1_diff_ci_low", "R1_diff_ci_high", "mAP_diff", "mAP_diff_ci_low", "mAP_diff_ci_high",
           "R1_diff_significant", "run_test_R1", "run_test_mAP", "ci_resamples", "ci_seed", "per_query", "runs"]


@dataclass(frozen=True)
class CellFile:
    """One run evaluated on one target's test split: its per-query file (relative to the output folder)."""

    method: str
    source: str
    target: str
    seed: int
    path: Path
    run_dir: Path
    sha256: Optional[str] = None  # of the file as evaluated or reused; checked again when read


def read_cell_file(out: Path, f: CellFile) -> stats.PerQueryFile:
    """A cell's per-query file, read once and checked against the SHA-256 recorded when it was
    written or reused (the bytes checked are the bytes parsed)."""
    return per_query_cache.read_checked(Path(out) / f.path, f.sha256, record=str(CELLS_MANIFEST),
                                        remedy="run the command again to evaluate that cell again")


def cell_file_path(method: str, source: str, target: str, seed: int) -> Path:
    return Path(PER_QUERY_DIR) / method / f"{source}-to-{target}" / f"seed-{seed}.csv"


def cell_key(checkpoint: Path, target: Domain, test_digest: str, eval_batch_size: int, precision: str) -> dict:
    """What a cell's per-query file depends on (:func:`analysis.per_query_cache.evaluation_key`):
    the selected checkpoint, the target (its name) and its test split, the eval batch size and the
    precision."""
    return per_query_cache.evaluation_key(checkpoint, test_digest, eval_batch_size=eval_batch_size,
                                          precision=precision, target=target.name)


def read_cells_manifest(out: Path) -> dict[str, dict]:
    """The record of the per-query files already in ``out`` (empty when none, or unreadable: then
    every cell is evaluated again, as logged)."""
    path = Path(out) / CELLS_MANIFEST
    if not path.is_file():
        return {}
    try:
        cells = json.loads(path.read_text())["cells"]
        if not isinstance(cells, dict):
            raise TypeError
        return {str(k): v for k, v in cells.items() if isinstance(v, dict)}
    except (ValueError, KeyError, TypeError):
        log.warning("%s is unreadable: every cell is evaluated again", path)
        return {}


def evaluate_cells(runs: Sequence[StudyRun], targets: Mapping[str, Sequence[Domain]], out: Path, *,
                   records: Optional[Mapping[str, list]] = None, progress: bool = False) -> list[CellFile]:
    """Evaluate each run's selected checkpoint on the test split of each of its source's cells,
    as its trainer evaluated (the run's precision and eval batch size), into per-query files
    under ``out`` (no caption text: the key identifies each caption). A file already there from
    the same checkpoint, test split, batch size and precision, unchanged since (``CELLS_MANIFEST``),
    is reused, as logged. ``records``: each target's test split, when already read (by domain name)."""
    records = dict(records or {})
    tokenizers: dict = {}
    manifest = read_cells_manifest(out)
    digests: dict[str, str] = {}
    done, reused = [], 0
    for run in runs:
        r = Run(run.run_dir)
        cfg = r.results()["config"]
        batch, precision = int(cfg["data"]["eval_batch_size"]), str(cfg["train"]["precision"])
        checkpoint = r.best_checkpoint(log)
        model = None
        for target in targets[run.source]:
            if target.name not in records:
                records[target.name] = load_dataset(target.dataset, target.root).split("test")
            if target.name not in digests:
                digests[target.name] = per_query_cache.records_digest(records[target.name], Path(target.root))
            rel = cell_file_path(run.method, run.source, target.name, run.seed)
            key = cell_key(checkpoint, target, digests[target.name], batch, precision)
            entry = manifest.get(rel.as_posix())
            if per_query_cache.is_current(Path(out) / rel, entry, key):
                done.append(CellFile(run.method, run.source, target.name, run.seed, rel, run.run_dir, entry["sha256"]))
                reused += 1
                log.info("%s on %s test: reused %s (same checkpoint, test split, batch size, precision)",
                         run.run_dir, target.name, rel)
                continue
            if model is None:
                model = load_model(checkpoint)
                if model.config.name not in tokenizers:
                    tokenizers[model.config.name] = build_tokenizer(model.config.name)
            res = evaluate_per_query(model, records[target.name], tokenizers[model.config.name], batch_size=batch,
                                     precision=precision, progress=progress)
            manifest[rel.as_posix()] = {"key": key, "sha256": per_query_cache.write(Path(out) / rel, res.rows())}
            done.append(CellFile(run.method, run.source, target.name, run.seed, rel, run.run_dir,
                                 manifest[rel.as_posix()]["sha256"]))
            atomic_write_json(Path(out) / CELLS_MANIFEST, {"cells": manifest})  # after each cell: a kill loses none
            log.info("%s on %s test: R1 %.2f", run.run_dir, target.name, res.metrics()["R1"])
        del model
    if reused:
        log.info("%d of %d cell evaluations reused from %s", reused, len(done), Path(out) / CELLS_MANIFEST)
    return done


def _run_test(files: Sequence[CellFile], key: str) -> float:
    """The mean over the cell's runs of their own results.json test metric ``key``."""
    values = [Run(f.run_dir).results()["metrics"].get("test", {}).get(key) for f in files]
    return float(np.mean(values)) if all(isinstance(v, (int, float)) for v in values) else float("nan")


def build_matrix(files: Sequence[CellFile], out: Path, *, resamples: int = stats.DEFAULT_RESAMPLES,
                 seed: int = stats.DEFAULT_SEED, parsed: Optional[dict[str, stats.PerQueryFile]] = None,
                 ) -> tuple[pd.DataFrame, dict[tuple[str, str], dict[str, np.ndarray]]]:
    """The matrix (one row per method and cell, :data:`COLUMNS`) and each cell's per-query
    differences UP-Person - full fine-tune (seed-averaged), for :func:`gaps`. ``parsed``, when
    given, is filled with every file as read and checked (by its path relative to ``out``), so
    that later steps need not read it again."""
    by_target: dict[str, stats.PerQueryFile] = {}
    groups: dict[tuple[str, str, str], list[CellFile]] = {}
    for f in files:
        groups.setdefault((f.method, f.source, f.target), []).append(f)
    values: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    for key, members in groups.items():
        ordered = sorted(members, key=lambda f: f.seed)
        read = [read_cell_file(out, f) for f in ordered]
        if parsed is not None:
            parsed |= {Path(f.path).as_posix(): r for f, r in zip(ordered, read)}
        first = by_target.setdefault(key[2], read[0])
        try:
            stats.aligned([first, *read])
        except ValueError as exc:
            raise ValueError(f"cell {key[1]}->{key[2]} ({key[0]}): {exc}") from None
        values[key] = stats.average_over_seeds([r.values() for r in read], keys=list(CELL_METRICS))
    order = {m: i for i, m in enumerate(METHODS)}
    rows, diffs = [], {}
    for (method, source, target), v in sorted(values.items(), key=lambda kv: (kv[0][1], order[kv[0][0]], kv[0][2])):
        members = sorted(groups[(method, source, target)], key=lambda f: f.seed)
        ci = stats.bootstrap_ci(v, keys=list(CELL_METRICS), resamples=resamples, seed=seed)
        row = {"method": method, "label": LABELS[method], "source": source, "target": target,
               "in_domain": source == target, "seeds": len(members), "queries": ci["queries"],
               "ci_resamples": resamples, "ci_seed": seed,
               "per_query": ";".join(str(f.path) for f in members), "runs": ";".join(str(f.run_dir) for f in members)}
        for k in CELL_METRICS:
            m = ci["metrics"][k]
            row |= {k: m["value"], f"{k}_ci_low": m["low"], f"{k}_ci_high": m["high"]}
        if source == target:
            row |= {"run_test_R1": _run_test(members, "R1"), "run_test_mAP": _run_test(members, "mAP")}
        other = values.get((FULL, source, target))
        if method == UPPERSON and other is not None:
            d = stats.paired_bootstrap(v, other, keys=list(CELL_METRICS), resamples=resamples, seed=seed)["metrics"]
            for k in CELL_METRICS:
                row |= {f"{k}_diff": d[k]["diff"], f"{k}_diff_ci_low": d[k]["low"], f"{k}_diff_ci_high": d[k]["high"]}
            row["R1_diff_significant"] = d["R1"]["significant"]
            diffs[(source, target)] = {k: v[k] - other[k] for k in CELL_METRICS}
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS), diffs


def diagonal_mismatches(df: pd.DataFrame, tol: float = 1e-6) -> list[str]:
    """In-domain cells whose metrics are not their runs' own results.json test metrics."""
    bad = []
    for _, r in df[df["in_domain"]].iterrows():
        for k in CELL_METRICS:
            if not abs(float(r[k]) - float(r[f"run_test_{k}"])) <= tol:
                bad.append(f"{r['method']} {r['source']} {k}: {r[k]:.4f} here, {r[f'run_test_{k}']:.4f} in its run")
    return bad


def gaps(diffs: Mapping[tuple[str, str], Mapping[str, np.ndarray]], *, resamples: int = stats.DEFAULT_RESAMPLES,
         seed: int = stats.DEFAULT_SEED, level: float = stats.DEFAULT_LEVEL) -> Optional[dict]:
    """In-domain gap, cross-domain gap and their difference, with joint bootstrap intervals.

    ``diffs``: per cell (source, target), the per-query difference UP-Person - full fine-tune.
    In-domain gap: the mean over in-domain cells of the cell's mean difference; cross-domain
    gap: the same over cross-domain cells; ``cross_minus_in``: cross-domain gap - in-domain gap.
    Each resample draws every target's test queries once (``stats.resampled_means``, seed
    ``seed + k`` for the k-th target in name order), shared by the cells on that target, so
    cells on the same queries stay paired. None without both kinds of cell.
    """
    inside = [c for c in diffs if c[0] == c[1]]
    cross = [c for c in diffs if c[0] != c[1]]
    if not inside or not cross:
        return None
    targets = sorted({c[1] for c in diffs})
    alpha = (1.0 - level) / 2.0
    out: dict = {"method": "paired percentile bootstrap over each target's test queries, drawn jointly",
                 "resamples": resamples, "seed": seed, "level": level,
                 "in_domain_cells": [f"{s}->{t}" for s, t in inside], "cross_domain_cells": [f"{s}->{t}" for s, t in cross]}
    for k in CELL_METRICS:
        means: dict[tuple[str, str], np.ndarray] = {}
        for i, t in enumerate(targets):
            cells_t = [c for c in diffs if c[1] == t]
            table = np.stack([np.asarray(diffs[c][k], dtype=np.float64) for c in cells_t], axis=1)
            resampled = stats.resampled_means(table, resamples=resamples, seed=seed + i)
            means |= {c: resampled[:, j] for j, c in enumerate(cells_t)}
        point = {c: float(np.mean(diffs[c][k])) for c in diffs}
        g_in = np.mean([means[c] for c in inside], axis=0)
        g_cross = np.mean([means[c] for c in cross], axis=0)
        est_in = float(np.mean([point[c] for c in inside]))
        est_cross = float(np.mean([point[c] for c in cross]))
        block = {}
        for name, est, draws in (("in_domain", est_in, g_in), ("cross_domain", est_cross, g_cross),
                                 ("cross_minus_in", est_cross - est_in, g_cross - g_in)):
            lo, hi = np.percentile(draws, [100 * alpha, 100 * (1 - alpha)])
            block[name] = {"value": est, "low": float(lo), "high": float(hi)}
        out[k] = block
    return out


def summary_line(g: Optional[dict]) -> str:
    """The study's one-line summary."""
    if g is None:
        return ("UP-Person - full fine-tune: no gap summary (it needs both methods on at least one in-domain and "
                "one cross-domain cell)")
    def fmt(m: dict) -> str:
        return f"{m['value']:+.2f} [{m['low']:+.2f}, {m['high']:+.2f}]"
    r = g["R1"]
    return (f"UP-Person - full fine-tune, R@1: in-domain gap {fmt(r['in_domain'])} ({len(g['in_domain_cells'])} "
            f"cells), cross-domain gap {fmt(r['cross_domain'])} ({len(g['cross_domain_cells'])} cells), "
            f"cross - in {fmt(r['cross_minus_in'])}; mAP cross - in {fmt(g['mAP']['cross_minus_in'])} "
            f"({int(100 * g['level'])}% intervals)")
