"""``python -m analysis budget``: performance against the number of trainable parameters.

The grid is data (:mod:`~analysis.budget.grid`, ``grid.yaml``: B1-B12 of
docs/generalization.md section 5 item 4, the full fine-tune and zero-shot); the sweep is a
folder of resumable runs (:mod:`~analysis.budget.sweep`, on the ablation's run rules); the
table (:mod:`~analysis.budget.table`) and the figure (:mod:`~analysis.budget.figure`) are
rebuilt from the runs' per-query files. docs/budget.md describes the outputs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

from analysis.budget.figure import budget_figure, save_budget_figure
from analysis.budget.grid import GRID_FILE, BudgetGrid, BudgetPoint, load_grid
from analysis.budget.readme import write_readme
from analysis.budget.sweep import (CheckpointKey, EvaluateFn, KeyFn, PlannedRun, Target, describe_plan, evaluate_run,
                                   parameter_counts, per_query_name, plan, run_sweep, steps_per_epoch)
from analysis.budget.table import IN_DOMAIN, collect, columns, copy_per_query, domains_of, pareto, write_table
from upperson.io import file_digest

__all__ = ["GRID_FILE", "IN_DOMAIN", "BudgetGrid", "BudgetPoint", "CheckpointKey", "EvaluateFn", "KeyFn", "PlannedRun",
           "Target", "budget_command", "budget_figure", "collect", "columns", "copy_per_query", "describe_plan", "domains_of",
           "evaluate_run", "load_grid", "parameter_counts", "pareto", "per_query_name", "plan", "run_sweep",
           "save_budget_figure", "write_table"]

log = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = Path("runs") / "budget"


def budget_command(args, *, train_fn=None, evaluate_fn: EvaluateFn = evaluate_run, key_fn: Optional[KeyFn] = None,
                   count=parameter_counts, command: str = "python -m analysis budget"):
    """The body of ``python -m analysis budget`` (the keywords: stubs for the tests)."""
    grid = load_grid(args.grid)
    if args.config:
        grid = BudgetGrid(args.config, grid.seeds, grid.points)
    names = [s.strip() for s in args.points.split(",") if s.strip()] if args.points else None
    grid = grid.select(names)
    if args.epochs is not None and args.epochs < 0:
        raise ValueError(f"--epochs must be at least 0, got {args.epochs}")
    source_dataset = args.dataset or None
    targets = [Target.parse(t, None) for t in args.targets]  # format: the source's unless named
    bad = [t.name for t in targets if t.name in (IN_DOMAIN, "test")]
    dup = sorted({t.name for t in targets if [u.name for u in targets].count(t.name) > 1})
    if bad or dup:
        raise ValueError(f"--target name {(bad or dup)[0]!r}: " + ("reserved for the source's own test split"
                         if bad else "given twice") + "; name each target once, e.g. icfg=/data/toy-icfg")
    runs_dir = Path(args.runs_dir) if args.runs_dir else DEFAULT_RUNS_DIR
    jobs = plan(grid, runs_dir, overrides=args.overrides, epochs=args.epochs, data_root=args.data_root,
                dataset=source_dataset, seeds=args.seeds, count=count)
    targets = [t if t.dataset else Target(t.name, jobs[0].cfg.data.dataset, t.root) for t in targets]
    missing = [t for t in targets if not Path(t.root).exists()]  # before --dry-run too, as --data-root is
    if missing:
        raise ValueError(f"--target {missing[0].name}: no such data root {missing[0].root}")
    if args.dry_run:
        sys.stdout.write("\n".join(describe_plan(jobs, steps_per_epoch(jobs[0].cfg))) + "\n")
        return []
    if not args.collect:
        if jobs[0].cfg.data.root is None:
            raise ValueError("the sweep's source data has no root: give --data-root DIR (e.g. the source domain's "
                             "`regime` split: python -m upperson toypedes --preset regime --domain cuhk)")
        if jobs[0].cfg.model.pretrained in (None, "random"):
            log.warning("the sweep's backbone is RANDOMLY initialised (model.pretrained: %s); the study's is "
                        "--set model.pretrained=RUN/backbone.safetensors", jobs[0].cfg.model.pretrained)
        run_sweep(jobs, targets, train_fn=train_fn, evaluate_fn=evaluate_fn, key_fn=key_fn, force=args.force,
                  progress=not args.no_progress)
    df = collect(jobs, targets, resamples=args.resamples, ci_seed=args.ci_seed)
    if df.empty:
        raise ValueError(f"no complete budget runs in {runs_dir}: run the sweep (without --collect) first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(df, out)
    copied = copy_per_query(jobs, targets, out)
    fig = save_budget_figure(df, domains_of(targets), out)
    grid_file = Path(args.grid) if args.grid else GRID_FILE
    write_readme(out, df, targets, command=command, details={
        "grid": f"{grid_file.name} (SHA-256 {file_digest(grid_file)[:16]}), base config {grid.base}, "
                f"{len(df)} points",
        "overrides on every point": " ".join(args.overrides) or "(none)",
        "epochs": args.epochs if args.epochs is not None else "the preset's",
        "source": f"{jobs[0].cfg.data.dataset} at {jobs[0].cfg.data.root} (its val selects each run's checkpoint, "
                  "its test is the in-domain column)",
        "targets": ", ".join(f"{t.name} ({t.dataset} at {t.root})" for t in targets) or "(none)",
        "intervals": f"{args.resamples} resamples, seed {args.ci_seed} (upperson.stats.combine_seeds)",
        "runs": f"{runs_dir} (rebuild this folder without training: the same command with --collect)"})
    log.info("budget table (%d points), %d per-query files and the figure in %s", len(df), copied, out)
    return [fig]
