"""The runs a transfer study needs: for each source, UP-Person and the full fine-tune (trained
and selected on the source's val split, one run per seed) and zero-shot (no training).

A sweep folder holds them as ``RUNS/<method>/<source>/seed-<s>/`` (``analysis.sweep``), or
``--runs METHOD:SOURCE=RUN_DIR`` names existing run folders instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from analysis.ablation.study import ALL_OFF
from analysis.sweep import RunJob
from analysis.transfer.domains import Domain, canonical
from upperson.config import ExperimentConfig, load_config
from upperson.train.run import Run

UPPERSON, FULL, ZERO = "upperson", "full-finetune", "zero-shot"
METHODS = (UPPERSON, FULL, ZERO)
LABELS = {UPPERSON: "UP-Person", FULL: "Full fine-tune", ZERO: "Zero-shot"}


@dataclass
class TransferPlan:
    """What to train: configs, shared overrides, epochs and seeds, per source domain."""

    sources: list[Domain]
    targets: list[Domain] = field(default_factory=list)
    config: str = "toypedes"  # UP-Person's preset (zero-shot: the same with every component off, no epochs)
    full_config: str = "toypedes-full-finetune"
    overrides: list[str] = field(default_factory=list)
    epochs: Optional[int] = None
    seeds: int = 1
    methods: tuple[str, ...] = METHODS
    #: source name -> train identities held out as its val (``--val-from-train``; sources without val only)
    val_from_train: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("no source domain: give --source NAME (or --dataset NAME)")
        if self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds}: give at least one seed")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs {self.epochs}: give at least one epoch (zero-shot is a method of its own)")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        stray = sorted(set(self.val_from_train) - {s.name for s in self.sources})
        if stray:
            raise ValueError(f"--val-from-train: {stray[0]} is not a source of the study")
        for item in self.overrides:  # it would reach the sources with a val split too, refused only as they train
            if item.split("=", 1)[0].strip() == "data.val_from_train":
                raise ValueError(f"--set {item}: give the hold-out as --val-from-train N, which holds out identities "
                                 "of the sources without a val split only")


def method_config(plan: TransferPlan, method: str, source: Domain, seed: Optional[int] = None) -> ExperimentConfig:
    """``method``'s config trained on ``source`` (the user's overrides, then the method's, then the data)."""
    items = list(plan.overrides)
    if method != ZERO:
        if plan.epochs is not None:
            items.append(f"train.epochs={int(plan.epochs)}")
        if seed is not None:
            items.append(f"train.seed={int(seed)}")
    else:
        items += [*ALL_OFF, "train.epochs=0"]
    items += [f"data.root={json.dumps(str(source.root))}", f"data.dataset={source.dataset}"]
    if source.name in plan.val_from_train:  # a source without val: its val is held out of train (every method)
        items.append(f"data.val_from_train={int(plan.val_from_train[source.name])}")
    return load_config(plan.full_config if method == FULL else plan.config, items)


@dataclass(frozen=True)
class PlannedRun:
    """One run of the study's sweep: its method, source, seed and job."""

    method: str
    source: str
    seed: int
    job: RunJob


def held_out_sources(sources: Sequence[Domain], has_val: Mapping[str, bool], identities: Optional[int],
                     train_identities: Optional[Mapping[str, int]] = None) -> dict[str, int]:
    """``--val-from-train``: the sources that get a held-out val (those without a val split), or
    the refusal: a source without val needs the flag, and the flag needs such a source, whose
    ``train_identities`` (by name, when given) must leave at least one identity to train on (the
    trainer's refusal, said here before anything trains)."""
    missing = [s for s in sources if not has_val[s.name]]
    if identities is None:
        if missing:
            s = missing[0]
            raise ValueError(f"source {s.name} ({s.root}) has no val split, and the transfer protocol selects on the "
                             "source's val only: pass --val-from-train N to hold out N whole train identities as its "
                             "val (data.val_from_train), give the annotation a val split, or pass runs selected on "
                             "val with --runs (docs/transfer.md)")
        return {}
    if identities < 1:
        raise ValueError(f"--val-from-train {identities}: give a number of identities >= 1")
    if not missing:
        raise ValueError(f"--val-from-train {identities}: every source ({', '.join(s.name for s in sources)}) has a "
                         "val split, which is never replaced; leave --val-from-train out")
    for s in missing:
        have = (train_identities or {}).get(s.name)
        if have is not None and identities >= have:
            raise ValueError(f"--val-from-train {identities}: source {s.name} ({s.root}) has {have} train identities; "
                             f"hold out fewer than {have} so that some remain to train on")
    return {s.name: int(identities) for s in missing}


def jobs(plan: TransferPlan, runs_dir: Path) -> list[PlannedRun]:
    """Every run of the study, by source then method then seed (zero-shot once: it is deterministic)."""
    out = []
    for source in plan.sources:
        for method in plan.methods:
            base = method_config(plan, method, source).train.seed
            for seed in range(base, base + (1 if method == ZERO else plan.seeds)):
                cfg = method_config(plan, method, source, None if method == ZERO else seed)
                job = RunJob(f"{method}/{source.name}/seed-{seed}", cfg,
                             Path(runs_dir) / method / source.name / f"seed-{seed}", kind=method)
                out.append(PlannedRun(method, source.name, seed, job))
    return out


@dataclass(frozen=True)
class StudyRun:
    """A complete run of the study: which method, trained on which source, and its folder."""

    method: str
    source: str
    run_dir: Path

    @property
    def seed(self) -> int:
        return int(Run(self.run_dir).results()["config"]["train"]["seed"])


def parse_given(specs: Sequence[str]) -> list[StudyRun]:
    """``--runs METHOD:SOURCE=RUN_DIR`` items; each must be a complete run selected on val."""
    out = []
    for spec in specs:
        key, sep, folder = spec.partition("=")
        method, colon, source = key.partition(":")
        if not sep or not colon or not folder:
            raise ValueError(f"--runs {spec!r}: give METHOD:SOURCE=RUN_DIR, e.g. --runs upperson:cuhk=runs/cuhk/up")
        if method not in METHODS:
            raise ValueError(f"--runs {spec!r}: unknown method {method!r}; known: {', '.join(METHODS)}")
        run = StudyRun(method, canonical(source), Path(folder).expanduser())
        check_run(run, f"--runs {spec}")
        out.append(run)
    return out


def check_run(run: StudyRun, what: str) -> None:
    """Refuse a run that is not complete, has no selected checkpoint, or was selected on test."""
    r = Run(run.run_dir)
    if not r.results_file.is_file():
        raise ValueError(f"{what}: {run.run_dir} is not a complete run folder (no results.json)")
    if not (r.best_dir / "petl.json").is_file():
        raise ValueError(f"{what}: {run.run_dir} has no selected checkpoint (best/petl.json)")
    try:
        results = r.results()
        cfg = results["config"]
        selected = results.get("selected_on")
        int(cfg["train"]["seed"]), int(cfg["data"]["eval_batch_size"]), str(cfg["train"]["precision"])
        dict(results["metrics"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{what}: {r.results_file} is not a results file written by training (unreadable, or "
                         "without config.train.seed, config.data.eval_batch_size, config.train.precision, "
                         "metrics)") from None
    if selected not in ("val", None) and run.method != ZERO:
        raise ValueError(f"{what}: {run.run_dir} was selected on {selected!r}; the transfer protocol selects on the "
                         "source domain's val split only (docs/transfer.md)")
