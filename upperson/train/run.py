"""A run folder's layout, in one place: every reader of a run goes through :class:`Run`.

What ``python -m upperson train`` writes into ``--output`` (docs/runs.md)::

    config.yaml      the resolved config
    best/            the checkpoint of the best evaluation (petl.safetensors + petl.json)
    best.old/        the previous best/, only between the two renames that swap a new one in
    last/            the newest training state (state.json + state.safetensors)
    last.old/        the previous last/, only between the two renames of its swap
    results.json     the final metrics of best/, written when training ends
    metrics.jsonl    one row per epoch

This module imports no torch: the command line reads a run folder before heavy imports.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from upperson.train.records import METRICS_NAME, find_state_dir
from upperson.train.rundir import CONFIG_NAME, is_run

log = logging.getLogger(__name__)

BEST = "best"
BEST_OLD = "best.old"
LAST = "last"
LAST_OLD = "last.old"
RESULTS_NAME = "results.json"
CHECKPOINT_META = "petl.json"  # the file that marks a checkpoint folder


@dataclass(frozen=True)
class Run:
    """One run folder (it need not exist yet: :meth:`is_run` says whether it holds a run)."""

    path: Path

    def __init__(self, path: Union[str, Path]) -> None:
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def of_checkpoint(cls, checkpoint: Union[str, Path]) -> Optional["Run"]:
        """The run whose ``best/`` (or ``best.old/``) ``checkpoint`` is; None for a checkpoint outside a run."""
        folder = Path(checkpoint)
        if folder.name in (BEST, BEST_OLD) and is_run(folder.parent):
            return cls(folder.parent)
        return None

    @staticmethod
    def label_of(checkpoint: Union[str, Path]) -> str:
        """A short name for a checkpoint: its run's folder name (``runs/a/best`` -> ``a``), else its own."""
        run = Run.of_checkpoint(checkpoint)
        return run.path.name if run is not None else Path(checkpoint).name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def best_dir(self) -> Path:
        return self.path / BEST

    @property
    def last_dir(self) -> Path:
        return self.path / LAST

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_NAME

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_NAME

    def is_run(self) -> bool:
        """Whether the folder holds a run (its ``config.yaml``)."""
        return is_run(self.path)

    def config(self):
        """The run's own config (``config.yaml``, read as :func:`upperson.config.load_run_config`)."""
        # imported here, for start-up time: upperson.config imports the PETL layers (torch)
        from upperson.config import load_run_config

        return load_run_config(self.config_file)

    def best_checkpoint(self, logger: Optional[logging.Logger] = None) -> Path:
        """``best/``; ``best.old/`` when a power cut fell between the swap's two renames, with a warning
        on ``logger`` (the caller's; default this module's)."""
        old = self.path / BEST_OLD
        if not self.best_dir.exists() and old.is_dir():
            (logger or log).warning("%s is missing: using %s (the next `train --resume` restores it)",
                                    self.best_dir, old)
            return old
        return self.best_dir

    def find_checkpoint(self) -> Path:
        """The checkpoint folder of a run, or of any folder holding one: ``best/petl.json``, the folder
        itself, else the newest folder below it holding ``petl.json``."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"run folder not found: {self.path}")
        if (self.best_dir / CHECKPOINT_META).exists():
            return self.best_dir
        if (self.path / CHECKPOINT_META).exists():
            return self.path
        candidates = sorted((p.parent for p in self.path.rglob(CHECKPOINT_META)), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(f"{self.path}: no checkpoint (no best/petl.json or other petl.json) in this "
                                    "run folder")
        return candidates[-1]

    def state_dir(self) -> Optional[Path]:
        """The newest complete training state: ``last/``, else ``last.old/``; None when there is none."""
        return find_state_dir(self.path)

    def results(self) -> dict:
        """``results.json``; a clear error when training has not finished."""
        if not self.results_file.exists():
            raise FileNotFoundError(f"{self.results_file} is missing: did the run finish?")
        return json.loads(self.results_file.read_text())

    def history(self) -> list[dict]:
        """The rows of ``metrics.jsonl``, one per epoch."""
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]
