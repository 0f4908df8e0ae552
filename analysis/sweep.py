"""A sweep: a folder of resumable training runs, planned before any of them trains.

Each :class:`RunJob` is one run folder (``upperson.train.train``). A folder with
``results.json`` of the same config is complete and reused; one with a ``config.yaml`` but no
results was interrupted and is resumed; an empty place is trained. A complete run of another
config is an error (``force`` trains it again). :func:`plan_lines` says what a sweep would do
and roughly what it costs, without touching anything (``--dry-run``).

Used by ``analysis transfer`` and ``analysis budget``; meant for any study that trains a grid of runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from upperson.config import ExperimentConfig, to_dict
from upperson.train.run import RESULTS_NAME, Run

log = logging.getLogger(__name__)

TrainFn = Callable[..., dict]

COMPLETE, RESUME, NEW, CONFLICT = "complete", "resume", "new", "conflict"


@dataclass(frozen=True)
class RunJob:
    """One planned run: a name for logs and tables, its config, and its folder."""

    name: str
    cfg: ExperimentConfig
    run_dir: Path
    kind: str = ""  # what the run is for cost estimates (e.g. the method): runs of one kind train alike

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a run job needs a name")
        object.__setattr__(self, "run_dir", Path(self.run_dir))


def planned_config(cfg: ExperimentConfig) -> dict:
    """The config as ``results.json`` records it (plain JSON types)."""
    return json.loads(json.dumps(to_dict(cfg)))


def run_state(job: RunJob) -> str:
    """``complete`` (same config), ``conflict`` (complete, other config), ``resume`` or ``new``."""
    run = Run(job.run_dir)
    if run.results_file.exists():
        return COMPLETE if run.results().get("config") == planned_config(job.cfg) else CONFLICT
    return RESUME if (job.run_dir / "config.yaml").exists() else NEW


def _default_train_fn() -> TrainFn:
    from upperson.train import train  # (the trainer's imports: only when a run trains)

    return train


def ensure_run(job: RunJob, *, train_fn: Optional[TrainFn] = None, force: bool = False,
               progress: bool = True) -> Path:
    """Make ``job``'s run complete: reuse it, resume it, or train it; returns its folder."""
    state = run_state(job)
    if state == COMPLETE and not force:
        log.info("%s: complete run in %s, reused", job.name, job.run_dir)
        return job.run_dir
    if state == CONFLICT and not force:
        raise ValueError(f"{job.run_dir} holds a complete run of {job.name} with a different config; "
                         "pass --force to train it again, or choose another --runs-dir")
    if force and job.run_dir.exists():
        log.info("%s: --force, removing %s", job.name, job.run_dir)
        shutil.rmtree(job.run_dir)
        state = NEW
    train_fn = train_fn or _default_train_fn()
    log.info("%s: %s %s", job.name, "resuming" if state == RESUME else "training", job.run_dir)
    t0 = time.time()
    train_fn(job.cfg, job.run_dir, resume=state == RESUME, progress=progress)
    if not Run(job.run_dir).results_file.exists():
        raise RuntimeError(f"{job.name}: training finished but wrote no {RESULTS_NAME} in {job.run_dir}")
    log.info("%s: done in %.0f s", job.name, time.time() - t0)
    return job.run_dir


def check_conflicts(jobs: Sequence[RunJob], force: bool = False) -> None:
    """Refuse the sweep, before any training, when a complete run of another config is in the way
    (``force``: it is trained again instead)."""
    if not force:
        conflicts = [j for j in jobs if run_state(j) == CONFLICT]
        if conflicts:
            raise ValueError(f"{conflicts[0].run_dir} holds a complete run of {conflicts[0].name} with a different "
                             "config; pass --force to train it again, or choose another --runs-dir")


def run_all(jobs: Sequence[RunJob], *, train_fn: Optional[TrainFn] = None, force: bool = False,
            progress: bool = True) -> list[Path]:
    """:func:`ensure_run` for every job in order (a conflict stops the sweep before any training)."""
    check_conflicts(jobs, force)
    return [ensure_run(j, train_fn=train_fn, force=force, progress=progress) for j in jobs]


def epochs_left(job: RunJob) -> int:
    """Epochs still to train: all for a new run, those after the last logged epoch for a resumed one."""
    state = run_state(job)
    if state == COMPLETE:
        return 0
    done = 0
    log_file = job.run_dir / "metrics.jsonl"
    if state == RESUME and log_file.is_file():
        for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                done = max(done, int(json.loads(line).get("epoch", 0)))
            except (ValueError, AttributeError, TypeError):
                continue
    return max(0, job.cfg.train.epochs - done)


def measured_rates(jobs: Sequence[RunJob], units: Mapping[str, int]) -> dict[str, float]:
    """Seconds per unit of work (one training image for one epoch) of each job kind, from its
    complete runs' ``train_time_s``; kinds without a complete trained run are left out."""
    spent: dict[str, list[float]] = {}
    for j in jobs:
        if run_state(j) != COMPLETE or j.cfg.train.epochs == 0:
            continue
        res = Run(j.run_dir).results()
        seconds, work = res.get("train_time_s"), j.cfg.train.epochs * units.get(j.name, 0)
        if isinstance(seconds, (int, float)) and seconds > 0 and work > 0:  # 0 s: not a measurement
            spent.setdefault(j.kind, []).append(float(seconds) / work)
    return {k: sum(v) / len(v) for k, v in spent.items()}


def plan_lines(jobs: Sequence[RunJob], units: Mapping[str, int]) -> list[str]:
    """What the sweep would do, one line per run, then the total: the state, the epochs left,
    the work (epochs x training images) and, where a complete run of the same kind measured
    it, the estimated time. ``units``: training images per epoch of each job (by name)."""
    rates = measured_rates(jobs, units)
    out, total_work, total_s, unknown = [], 0, 0.0, 0
    for j in jobs:
        state, left = run_state(j), epochs_left(j)
        work = left * units.get(j.name, 0)
        total_work += work
        if work == 0:
            cost = "reused" if state == COMPLETE else "no training"
        elif j.kind in rates:
            seconds = work * rates[j.kind]
            total_s += seconds
            cost = f"~{_duration(seconds)}"
        else:
            unknown += 1
            cost = "time unknown (no complete run of this kind to measure)"
        out.append(f"{j.name:36s} {state:9s} {left:3d} epochs x {units.get(j.name, 0):6d} images = {work:8d}  {cost}"
                   f"  {j.run_dir}")
    tail = f"; {unknown} run(s) of unmeasured kinds not included" if unknown else ""
    conflicts = sum(run_state(j) == CONFLICT for j in jobs)
    if conflicts:
        tail += (f"; {conflicts} conflict(s): a complete run of another config is in the way "
                 "(the sweep refuses to start; --force trains it again)")
    measured = f"~{_duration(total_s)} estimated from measured runs" if rates else "no measured time yet"
    out.append(f"total: {len(jobs)} runs, {sum(run_state(j) != COMPLETE for j in jobs)} to train, "
               f"{total_work} image-epochs, {measured}{tail}")
    return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
