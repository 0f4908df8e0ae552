"""The sweep: train each variant for each seed into its run folder, then evaluate it query by query.

``<runs-dir>/<variant>/seed-<s>/`` is one run (``upperson.train.train``), run by the sweep engine
(:mod:`analysis.sweep`): a folder with ``results.json`` of the same config is complete and skipped,
one without is resumed, one of another config refused before anything trains. Each run's selected
checkpoint is evaluated once more on the test split into ``per_query_test.csv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from analysis.ablation.study import Variant, variant_config
from analysis.sweep import RunJob, TrainFn, check_conflicts, ensure_run
from upperson import stats
from upperson.config import ExperimentConfig, load_config
from upperson.train.run import Run

log = logging.getLogger(__name__)

PER_QUERY_NAME = "per_query_test.csv"


def run_complete(run_dir: Path) -> bool:
    return Run(run_dir).results_file.exists()


def _default_train_fn() -> TrainFn:
    from upperson.train import train  # (the trainer's imports: only when a variant trains)

    return train


def write_run_per_query(cfg: ExperimentConfig, run_dir: Path, *, progress: bool = False) -> Path:
    """Evaluate a complete run's selected checkpoint (``best/``) on the test split, query by
    query, into ``run_dir/per_query_test.csv`` (as the trainer evaluates: same precision)."""
    # (torch and open_clip: only when a run is evaluated; reading and plotting tables stays light)
    from upperson.data import build_tokenizer, load_dataset
    from upperson.evaluation import evaluate_per_query
    from upperson.model.checkpoint import load_model

    run_dir = Path(run_dir)
    model = load_model(run_dir / "best")
    data = load_dataset(cfg.data.dataset, cfg.data.root)
    res = evaluate_per_query(model, data.split("test"), build_tokenizer(model.config.name),
                             batch_size=cfg.data.eval_batch_size, precision=cfg.train.precision, progress=progress)
    path = run_dir / PER_QUERY_NAME
    stats.write_per_query_csv(path, res.rows(), caption_text=False)
    return path


def _ensure_per_query(cfg: ExperimentConfig, run_dir: Path, progress: bool) -> None:
    if not (run_dir / PER_QUERY_NAME).exists():
        log.info("per-query test results of %s", run_dir)
        write_run_per_query(cfg, run_dir, progress=progress)


def run_variant(variant: Variant, cfg: ExperimentConfig, run_dir: Path, *, train_fn: Optional[TrainFn] = None,
                force: bool = False, progress: bool = True) -> Path:
    """Train one variant into ``run_dir`` (:func:`analysis.sweep.ensure_run`: a complete run of the
    same config is reused, an incomplete one resumed, one of another config refused); then make
    sure the run has its per-query test results (an evaluation, no training)."""
    def trainer(*args, **kwargs) -> dict:  # this module's default, looked up only when a run trains
        return (train_fn or _default_train_fn())(*args, **kwargs)

    run_dir = ensure_run(RunJob(variant.name, cfg, Path(run_dir)), train_fn=trainer, force=force, progress=progress)
    _ensure_per_query(cfg, run_dir, progress)
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
    check_conflicts([RunJob(v.name, cfg, run_dir) for v, cfg, run_dir in jobs], force)
    done = []
    for v, cfg, run_dir in tqdm(jobs, desc="ablation", unit="run", disable=not progress):
        done.append(run_variant(v, cfg, run_dir, train_fn=train_fn, force=force, progress=progress))
    return done
