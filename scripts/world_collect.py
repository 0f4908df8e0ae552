"""Keep a source's tuning-grid runs in the repository and select on the source's val split.

docs/generalization.md, section 4: the configuration of each method is the grid run with the best
val R@1 of the source domain (the epoch was already selected on val by training). This copies each
complete run's small files (results, metrics, config, log; the selected checkpoint of PETL runs,
which is small; of a full fine-tune, its checkpoint without its 31 MB weights) under
``assets/world/runs/SOURCE/NAME/`` and writes ``selection.json`` beside them. Test numbers are
never read for the selection.

    python scripts/world_collect.py SOURCE [W]      (W: the study folder; default /work/world)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout
from upperson.io import atomic_copy, atomic_write_json  # noqa: E402
from upperson.logs import setup_logging  # noqa: E402

log = logging.getLogger("world_collect")

REPO = Path(__file__).resolve().parents[1]
SMALL_FILES = ("results.json", "metrics.jsonl", "config.yaml", "train.log")
#: of those, the ones a run may lack (a zero-shot run trains no epoch: no metrics.jsonl)
OPTIONAL_FILES = ("metrics.jsonl",)
#: each grid run's method, by its name's prefix (scripts/world_grid.sh)
METHODS = {"up": "upperson", "ft": "full-finetune", "zs": "zero-shot"}  # zs: no training (train.epochs=0)
#: the largest checkpoint kept in the repository (a PETL one is under 1 MB; a full one is 31 MB)
MAX_CHECKPOINT_BYTES = 2_000_000
#: a checkpoint's weights file; a larger checkpoint keeps only its other files (petl.json records the
#: weights' SHA-256, which identifies the transfer cells evaluated from them: analysis/transfer/cells.py)
WEIGHTS = "petl.safetensors"


def val_r1(results: dict) -> float:
    """The run's selected-checkpoint val R@1 (it must have been selected on val)."""
    if results.get("selected_on") != "val":
        raise ValueError(f"selected on {results.get('selected_on')!r}, not on the source's val split")
    return float(results["metrics"]["val"]["R1"])


def select(runs: dict[str, dict]) -> dict[str, dict]:
    """Per method, the grid run (seed 0; not a ``-seedN`` rerun) with the best val R@1 (the first in
    name order on a tie)."""
    out: dict[str, dict] = {}
    for name in sorted(n for n in runs if "-seed" not in n):
        method = METHODS[name.split("_")[0]]
        r1 = val_r1(runs[name])
        if method not in out or r1 > out[method]["val_R1"]:
            out[method] = {"run": name, "val_R1": r1, "lr": runs[name]["config"]["train"]["lr"],
                           "seed": runs[name]["config"]["train"]["seed"]}
    return out


def _run_folders(folder: Path) -> list[Path]:
    """The run folders of a grid (named by METHODS' prefixes: up_a, ft_b-seed1, zs, ...)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.split("_")[0] in METHODS) \
        if folder.is_dir() else []


def collect(source: str, study: Path, dest: Path) -> dict:
    """Copy the complete grid runs of ``source`` into ``dest`` and write its selection, over every
    complete run: those of the study folder and those ``dest`` already keeps (a study folder that
    holds only some of the grid, e.g. after a machine was lost, does not shrink the selection)."""
    grid = study / "runs" / source
    if not grid.is_dir():
        raise ValueError(f"{grid}: no such folder; give the study folder W whose runs/{source}/ holds the grid's runs "
                         f"(bash scripts/world_grid.sh {source} W makes them)")
    runs = {}
    for run in _run_folders(grid):
        if not (run / "results.json").is_file():
            log.warning("%s: not finished (no results.json); left out", run)
            continue
        kept = dest / run.name / "results.json"
        if kept.is_file() and kept.read_bytes() != (run / "results.json").read_bytes():
            # the repository's record is the source of truth: a run of the same name made again (its
            # timings differ, or more) does not overwrite it
            log.warning("%s: the repository keeps another %s (its results.json differs: made again?); the "
                        "repository's is kept and used, this one is not copied", run, run.name)
            continue
        runs[run.name] = json.loads((run / "results.json").read_text())
        for name in SMALL_FILES:
            if name not in OPTIONAL_FILES or (run / name).is_file():
                atomic_copy(run / name, dest / run.name / name)
        best = run / "best"
        size = sum(p.stat().st_size for p in best.iterdir())
        large = size > MAX_CHECKPOINT_BYTES
        for p in sorted(best.iterdir()):
            if not (large and p.name == WEIGHTS):
                atomic_copy(p, dest / run.name / "best" / p.name)
        if large:
            log.info("%s: its weights (%.0f MB) stay outside the repository; best/petl.json (their SHA-256) is "
                     "kept", run.name, size / 1e6)
    for kept in _run_folders(dest):  # the runs the repository keeps already, from an earlier collect
        if kept.name not in runs and (kept / "results.json").is_file():
            runs[kept.name] = json.loads((kept / "results.json").read_text())
    if not runs:
        raise ValueError(f"{grid}: no complete grid run")
    chosen = select(runs)
    selection = {"source": source, "rule": "best val R@1 of the source domain (docs/generalization.md section 4)",
                 "val_R1": {name: val_r1(r) for name, r in sorted(runs.items())}, "selected": chosen,
                 "seeds": {m: sorted(n for n in runs if n.split("-seed")[0] == c["run"]) for m, c in chosen.items()}}
    atomic_write_json(dest / "selection.json", selection)
    return selection


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", choices=("cuhk", "icfg", "rstp"))
    p.add_argument("study", nargs="?", default="/work/world", type=Path)
    args = p.parse_args(argv)
    setup_logging(packages=("upperson", "world_collect"))
    try:
        selection = collect(args.source, args.study, REPO / "assets" / "world" / "runs" / args.source)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for method, s in selection["selected"].items():
        log.info("%s on %s: %s (val R@1 %.2f, lr %g)", method, args.source, s["run"], s["val_R1"], s["lr"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
