"""``python -m analysis transfer``: train (or take) the runs, evaluate every cell, write the
matrix, its per-query files, the heat map and the gap summary."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from analysis import sweep
from analysis.options import split_names
from analysis.transfer.cells import (build_matrix, diagonal_mismatches, evaluate_cells, gaps, summary_line)
from analysis.transfer.domains import cells, parse_roots, resolve
from analysis.transfer.examples import EXAMPLE_CAPTIONS, example_captions
from analysis.transfer.figure import transfer_figure
from analysis.transfer.options import DEFAULT_RUNS_DIR
from analysis.transfer.plan import METHODS, StudyRun, TransferPlan, check_run, held_out_sources, jobs, parse_given
from upperson.data import load_dataset
from upperson.data.holdout import hold_out_val
from upperson.io import atomic_path, atomic_write_json

log = logging.getLogger("analysis")

MATRIX_NAME = "transfer.csv"
SUMMARY_NAME = "transfer_summary.json"


def _held_out(planned, datasets) -> dict[str, object]:
    """Each source's dataset as its runs train on it: with the held-out val of ``--val-from-train``."""
    out = dict(datasets)
    for p in planned:
        d = p.job.cfg.data
        if d.val_from_train is not None and p.source in datasets:
            out[p.source] = hold_out_val(datasets[p.source], d.val_from_train, d.val_from_train_seed)
    return out


def _work_per_epoch(planned, datasets) -> dict[str, int]:
    """Training images each planned run sees per epoch (fewer with ``train.max_steps_per_epoch``)."""
    out = {}
    for p in planned:
        n, t = len(datasets[p.source].split("train")), p.job.cfg.train
        out[p.job.name] = n if t.max_steps_per_epoch is None else min(n, t.max_steps_per_epoch * p.job.cfg.data.batch_size)
    return out


def _held_out_lines(planned, datasets, held) -> list[str]:
    """One line per source that gets a held-out val: how many identities, of how many, with which seed."""
    lines, seen = [], set()
    for p in planned:
        d = p.job.cfg.data
        if d.val_from_train is None or p.source in seen:
            continue
        seen.add(p.source)
        total = len({r.pid for r in datasets[p.source].splits.get("train") or []})
        ids, images, captions = held[p.source].counts("val")
        lines.append(f"{p.source}: val held out of train: {ids} of {total} identities (data.val_from_train="
                     f"{d.val_from_train}, seed {d.val_from_train_seed}): {images} images, {captions} captions")
    return lines


def run(args, command: str = "") -> list:
    """The command's body; returns the figures written (none for ``--dry-run``)."""
    roots = parse_roots(args.data_roots)
    given = parse_given(args.given_runs)
    names = list(args.sources) or list(dict.fromkeys(r.source for r in given))
    sources = resolve(names, roots)
    targets = resolve(args.targets, roots)
    resolve([*names, *args.targets], roots)  # one kind of domain: ToyPEDES or real datasets
    known = {d.name for d in sources}
    stray = [r for r in given if r.source not in known]
    if stray:
        raise ValueError(f"--runs {stray[0].method}:{stray[0].source}: {stray[0].source} is not a --source of the study")
    seen = {}
    for r in given:
        key = (r.method, r.source, r.seed)
        if key in seen:
            raise ValueError(f"--runs {r.method}:{r.source}: {seen[key]} and {r.run_dir} are both seed {r.seed}; "
                             "give each seed once")
        seen[key] = r.run_dir
    study = cells(sources, targets)
    targets_of = {s.name: [t for ss, t in study if ss.name == s.name] for s in sources}
    out = Path(args.out)
    datasets = {}
    for d in [*sources, *targets]:  # every dataset read (once) before any training: a bad data root fails now
        datasets[d.name] = load_dataset(d.dataset, d.root)
        if not datasets[d.name].splits.get("test"):
            raise ValueError(f"--data-root {d.name}={d.root}: the dataset has no test split")
    if given:
        ignored = [flag for flag, used in (("--set", args.overrides), ("--epochs", args.epochs is not None),
                                           ("--seeds", args.seeds != 1), ("--methods", args.methods),
                                           ("--force", args.force),
                                           ("--val-from-train", args.val_from_train is not None)) if used]
        if ignored:
            log.warning("with --runs nothing trains: %s not used", ", ".join(ignored))
        runs = given
        if args.dry_run:
            sys.stdout.write(f"{len(given)} given run(s), nothing to train; {sum(len(targets_of[r.source]) for r in given)}"
                             f" evaluations into {out}\n")
            return []
    else:
        # selection on the source's val only, never on test (the trainer's fallback): a held-out val where none
        held = held_out_sources(sources, {d.name: bool(datasets[d.name].splits.get("val")) for d in sources},
                                args.val_from_train,
                                {d.name: len({r.pid for r in datasets[d.name].splits.get("train") or []})
                                 for d in sources})
        methods = tuple(split_names(args.methods) or METHODS)
        plan = TransferPlan(sources=sources, targets=targets, config=args.config, full_config=args.full_finetune_config,
                            overrides=list(args.overrides), epochs=args.epochs, seeds=args.seeds, methods=methods,
                            val_from_train=held)
        planned = jobs(plan, Path(args.runs_dir) if args.runs_dir else DEFAULT_RUNS_DIR)
        if args.dry_run:
            trained_on = _held_out(planned, datasets)
            lines = _held_out_lines(planned, datasets, trained_on)
            lines += sweep.plan_lines([p.job for p in planned], _work_per_epoch(planned, trained_on))
            n_eval = sum(len(targets_of[p.source]) for p in planned)
            lines.append(f"then {n_eval} evaluations (each run on the test split of each of its cells: "
                         f"{', '.join(f'{s.name}->{t.name}' for s, t in study)}) into {out}")
            sys.stdout.write("\n".join(lines) + "\n")
            return []
        if any(p.job.cfg.model.pretrained is None for p in planned):
            log.warning("the study's backbone is RANDOMLY initialised (model.pretrained is null): pass "
                        "--set model.pretrained=PATH for a meaningful study")
        sweep.run_all([p.job for p in planned], force=args.force, progress=not args.no_progress)
        runs = [StudyRun(p.method, p.source, p.job.run_dir) for p in planned]
        for r in runs:
            check_run(r, r.method)
    test_splits = {name: data.split("test") for name, data in datasets.items()}
    files = evaluate_cells(runs, targets_of, out, records=test_splits, progress=not args.no_progress)
    parsed: dict = {}  # every per-query file as the matrix read and checked it
    df, diffs = build_matrix(files, out, resamples=args.resamples, seed=args.ci_seed, parsed=parsed)
    bad = diagonal_mismatches(df)
    for b in bad:
        log.warning("in-domain cell differs from its run's results.json (another data root or precision?): %s", b)
    summary = gaps(diffs, resamples=args.resamples, seed=args.ci_seed)
    texts = example_captions(df, test_splits, parsed)
    fig, line = write_study(out, df, summary, bad, command=command, cells=[f"{s.name}->{t.name}" for s, t in study])
    atomic_write_json(out / EXAMPLE_CAPTIONS, {"note": "caption texts of the queries the app's Transfer view shows "
                                                       "where the two methods disagree (analysis.transfer.examples)",
                                               "captions": texts})
    sys.stdout.write(line + "\n")
    log.info("transfer matrix (%d rows) in %s", len(df), out / MATRIX_NAME)
    return [fig]


def write_study(out: Path, df, summary, bad: list, *, command: str, cells: list[str]):
    """The study's files: the matrix (``transfer.csv``), the summary (``transfer_summary.json``) and the
    heat map; returns (figure record, summary line). The per-query files are written before, by
    ``cells.evaluate_cells``."""
    line = summary_line(summary)
    with atomic_path(Path(out) / MATRIX_NAME) as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_json(Path(out) / SUMMARY_NAME, {"summary": line, "gaps": summary, "diagonal_mismatches": bad,
                                                 "command": command, "cells": list(cells)})
    return transfer_figure(df, Path(out), summary), line

