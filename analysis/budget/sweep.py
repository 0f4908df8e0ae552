"""The budget sweep: a folder of resumable runs, ``<runs-dir>/<point>/seed-<s>/``.

Training goes through the one sweep engine, :mod:`analysis.sweep` (a complete run of the same
config is reused, an incomplete one resumed, a complete one of another config refused before
anything trains). After training, each run's selected checkpoint is evaluated query by query
on its own test split (``per_query_test.csv.gz``, the ablation's file, gzipped) and on every
target's test split (``per_query_target-<name>.csv.gz``), each with its record beside it (``.json``: what it was
evaluated from, :mod:`analysis.per_query_cache`). A file is kept while its record matches the
run's selected checkpoint, the test split, the eval batch size and the precision, and its bytes
are unchanged; otherwise it is evaluated again, as logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm.auto import tqdm

from analysis import per_query_cache
from analysis.ablation.runs import seed_runs
from analysis.ablation.study import variant_config
from analysis.budget.grid import BudgetGrid, BudgetPoint
from analysis.sweep import (COMPLETE, CONFLICT, NEW, RESUME, RunJob, TrainFn, check_conflicts, ensure_run,
                            measured_rates, run_state)
from upperson.config import ExperimentConfig
from upperson.data import DATASETS, load_dataset

log = logging.getLogger(__name__)

#: (cfg, run_dir, dataset, root) -> per-query rows of the run's selected checkpoint on that test split
EvaluateFn = Callable[[ExperimentConfig, Path, str, str], list]
#: (cfg, run_dir, dataset, root) -> what that per-query file depends on (its record's key)
KeyFn = Callable[[ExperimentConfig, Path, str, str], dict]


@dataclass(frozen=True)
class Target:
    """A cross-domain test set: its name (the column suffix), dataset format and data root."""

    name: str
    dataset: Optional[str]  # None: the source's format
    root: str

    @staticmethod
    def parse(spec: str, default_dataset: Optional[str] = None) -> "Target":
        """``NAME=ROOT``, ``NAME:DATASET=ROOT`` or ``ROOT`` (the name is the folder's). A NAME that
        is a dataset name (``icfg-pedes=/data/ICFG-PEDES``) is also the target's format."""
        name, _, root = spec.rpartition("=")
        if not root:
            raise ValueError(f"--target {spec!r}: give NAME=ROOT (e.g. icfg=/data/toy-icfg)")
        dataset = default_dataset
        if ":" in name:
            name, dataset = name.split(":", 1)
            if dataset not in DATASETS:
                raise ValueError(f"--target {spec!r}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        elif name in DATASETS:
            dataset = name
        name = name or Path(root).name
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"--target {spec!r}: the name {name!r} must be letters, digits, '-' or '_'")
        return Target(name, dataset, root)


def per_query_name(domain: str) -> str:
    """The per-query file of a run on ``domain`` ("test": the source's own test split), gzipped: a
    grid's 27 runs x 3 splits of ~6,000 queries are ~35 MB as plain CSV, ~10 MB so."""
    return "per_query_test.csv.gz" if domain == "test" else f"per_query_target-{domain}.csv.gz"


@dataclass
class PlannedRun:
    point: BudgetPoint
    seed: int
    cfg: ExperimentConfig
    run_dir: Path
    trainable: int
    total: int

    @property
    def job(self) -> RunJob:
        """The run as the sweep engine (:mod:`analysis.sweep`) knows it."""
        return RunJob(f"{self.point.name}/seed-{self.seed}", self.cfg, self.run_dir, kind=self.point.kind)

    @property
    def status(self) -> str:
        """``done``, ``conflict`` (complete, another config), ``resume`` or ``new``."""
        return _STATUS[run_state(self.job)]


#: the engine's run state -> the word the budget's --dry-run table uses
_STATUS = {COMPLETE: "done", CONFLICT: "conflict", RESUME: "resume", NEW: "new"}


def parameter_counts(cfg: ExperimentConfig) -> tuple[int, int]:
    """(trainable, total) of the model ``cfg`` builds, as ``python -m upperson params --random-init``."""
    from upperson.model import build_model  # (torch and open_clip: only when a grid is planned)
    from upperson.model.params import count_parameters

    model_cfg = dataclasses.replace(cfg.model, pretrained="random")  # the counts do not depend on the weights
    backbone_log, quiet = logging.getLogger("upperson.model.backbone"), _CountingOnly()
    backbone_log.addFilter(quiet)  # its random-init warning is about training; these weights count, never run
    try:
        report = count_parameters(build_model(model_cfg))
    finally:
        backbone_log.removeFilter(quiet)
    return report.trainable, report.total


class _CountingOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "RANDOMLY initialised" not in record.getMessage()


def plan(grid: BudgetGrid, runs_dir: Path, *, overrides: Sequence[str] = (), epochs: Optional[int] = None,
         data_root: Optional[str] = None, dataset: Optional[str] = None, seeds: Optional[int] = None,
         count: Callable[[ExperimentConfig], tuple[int, int]] = parameter_counts) -> list[PlannedRun]:
    """Every run of the grid, configs built (so a bad override fails before any training)."""
    seeds = grid.seeds if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: give at least one seed")
    out = []
    counted: dict[str, tuple[int, int]] = {}
    for p in grid.points:
        v = p.variant()
        base_seed = variant_config(v, grid.base, overrides=overrides).train.seed
        for seed in range(base_seed, base_seed + (seeds if p.trains else 1)):
            cfg = variant_config(v, grid.base, overrides=overrides, epochs=epochs, data_root=data_root,
                                 dataset=dataset, seed=seed)
            if p.name not in counted:
                counted[p.name] = count(cfg)
            out.append(PlannedRun(p, seed, cfg, Path(runs_dir) / p.name / f"seed-{seed}", *counted[p.name]))
    return out


def evaluate_run(cfg: ExperimentConfig, run_dir: Path, dataset: str, root: str) -> list:
    """The run's selected checkpoint (``best/``) on ``dataset``'s test split at ``root``, query by query."""
    # (torch and open_clip: only when a run is evaluated)
    from upperson.data import build_tokenizer, load_dataset
    from upperson.evaluation import evaluate_per_query
    from upperson.model.checkpoint import load_model

    model = load_model(Path(run_dir) / "best")
    data = load_dataset(dataset, root)
    res = evaluate_per_query(model, data.split("test"), build_tokenizer(model.config.name),
                             batch_size=cfg.data.eval_batch_size, precision=cfg.train.precision, progress=False)
    return res.rows()


class CheckpointKey:
    """The key of a run's per-query file on a test split (:func:`analysis.per_query_cache.evaluation_key`):
    the run's selected checkpoint (``best/``), the split (its digest computed once per dataset and
    root), the eval batch size, the precision and the dataset."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], str] = {}

    def __call__(self, cfg: ExperimentConfig, run_dir: Path, dataset: str, root: str) -> dict:
        if (dataset, root) not in self._digests:
            records = load_dataset(dataset, root).split("test")
            self._digests[(dataset, root)] = per_query_cache.records_digest(records, Path(root))
        return per_query_cache.evaluation_key(Path(run_dir) / "best", self._digests[(dataset, root)],
                                              eval_batch_size=cfg.data.eval_batch_size,
                                              precision=cfg.train.precision, dataset=dataset)


def run_planned(job: PlannedRun, targets: Sequence[Target], *, train_fn: Optional[TrainFn] = None,
                evaluate_fn: EvaluateFn = evaluate_run, key_fn: Optional[KeyFn] = None, force: bool = False,
                progress: bool = True) -> Path:
    """Train (or reuse, or resume) one run (:func:`analysis.sweep.ensure_run`), then write its per-query
    files that are missing or no longer match their record (``key_fn``, default :class:`CheckpointKey`)."""
    key_fn = key_fn or CheckpointKey()
    run_dir = ensure_run(job.job, train_fn=train_fn, force=force, progress=progress)
    domains = [("test", job.cfg.data.dataset, job.cfg.data.root)] + [(t.name, t.dataset, t.root) for t in targets]
    for name, dataset, root in domains:
        path = run_dir / per_query_name(name)
        key = key_fn(job.cfg, run_dir, dataset, str(root))
        if per_query_cache.is_current(path, per_query_cache.read_sidecar(path), key):
            continue
        if path.exists():
            log.warning("%s: evaluated again: no record of what it was evaluated from (an older file), or its "
                        "checkpoint, test split, batch size or precision changed, or the file did", path)
        log.info("%s seed %d: per-query results on %s", job.point.name, job.seed, name)
        sha = per_query_cache.write(path, evaluate_fn(job.cfg, run_dir, dataset, str(root)))
        per_query_cache.write_sidecar(path, key, sha, root=str(root))
    return run_dir


def run_sweep(jobs: Sequence[PlannedRun], targets: Sequence[Target], *, train_fn: Optional[TrainFn] = None,
              evaluate_fn: EvaluateFn = evaluate_run, key_fn: Optional[KeyFn] = None, force: bool = False,
              progress: bool = True) -> list[Path]:
    """Every planned run, in order (an interrupted sweep continues where it stopped; a conflict stops
    it before anything trains)."""
    check_conflicts([j.job for j in jobs], force)
    key_fn = key_fn or CheckpointKey()  # one for the sweep: each split's digest computed once
    return [run_planned(j, targets, train_fn=train_fn, evaluate_fn=evaluate_fn, key_fn=key_fn, force=force,
                        progress=progress) for j in tqdm(jobs, desc="budget", unit="run", disable=not progress)]


def seconds_per_epoch(jobs: Sequence[PlannedRun]) -> dict[str, float]:
    """Measured training seconds per epoch of each kind, from the complete runs among ``jobs``
    (:func:`analysis.sweep.measured_rates` with one unit of work per epoch)."""
    trained = [j.job for j in jobs if j.point.trains]
    return measured_rates(trained, {j.name: 1 for j in trained})


def steps_per_epoch(cfg: ExperimentConfig) -> Optional[int]:
    """Training steps per epoch (train captions / batch size), when the source's annotations can be read."""
    if cfg.data.root is None or not Path(cfg.data.root).exists():
        return None
    from upperson.data import load_dataset  # (the readers: only for a dry run's estimate)

    try:
        records = load_dataset(cfg.data.dataset, cfg.data.root).split("train")
    except (ValueError, OSError) as exc:
        log.warning("cannot read the source's train split for the estimate (%s)", exc)
        return None
    return math.ceil(sum(len(r.captions) for r in records) / cfg.data.batch_size)


def describe_plan(jobs: Sequence[PlannedRun], steps: Optional[int] = None) -> list[str]:
    """The ``--dry-run`` lines: each run, its status, trainable parameters, epochs (and training
    steps, when ``steps`` per epoch is known) and its time, estimated from the finished runs."""
    rate = seconds_per_epoch(jobs)
    lines = [f"{'point':<14} {'seed':>4} {'status':<7} {'trainable':>11} {'epochs':>6} {'steps':>7}  estimate"]
    total, unknown, untimed = 0.0, 0, 0
    for j in jobs:
        epochs = int(j.cfg.train.epochs) if j.point.trains else 0
        if j.status == "done":
            est = "0 (done)"
        elif j.status == "conflict":
            est = "a complete run of another config is in the way (--force trains it again)"
        elif not j.point.trains or epochs == 0:
            est = "evaluation only"
        elif j.point.kind in rate or "petl" in rate:
            s = epochs * rate.get(j.point.kind, rate.get("petl", math.nan))
            total += s
            est = f"~{s / 60:.0f} min (measured {rate.get(j.point.kind, rate.get('petl')):.3g} s/epoch)"
        else:
            unknown += 1
            untimed += epochs
            est = f"{epochs} epochs (no finished run to time yet)"
        n_steps = f"{epochs * steps:,}" if steps is not None else "?"
        lines.append(f"{j.point.name:<14} {j.seed:>4} {j.status:<7} {j.trainable:>11,} {epochs:>6} {n_steps:>7}  {est}")
    todo = sum(j.status != "done" for j in jobs)
    tail = (f"; {unknown} runs not timed yet ({untimed * steps:,} training steps in all)" if unknown and steps
            else f"; {unknown} runs not timed yet" if unknown else "")
    lines.append(f"{len(jobs)} runs, {todo} to train or finish; estimated ~{total / 3600:.1f} h for the timed ones"
                 + tail)
    return lines


def complete_runs(runs_dir: Path, point: BudgetPoint) -> list[Path]:
    """A point's complete runs (seed order)."""
    return seed_runs(Path(runs_dir) / point.name)
