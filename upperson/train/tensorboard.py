"""TensorBoard event files beside ``metrics.jsonl`` (``train.tensorboard: true`` or ``--tensorboard``).

Written to ``RUN/tensorboard/`` by the main process: per step ``train/loss``, ``train/lr`` and
``train/step_time_s``; per epoch ``epoch/loss``, ``epoch/samples_per_s``, the selection split's
metrics (``val/R1``, ``val/mAP``, ...) and the S-Prefix scale of every layer
(``prefix_scale/image/03``). ``metrics.jsonl`` stays the source of truth; the event files are a
view of it for TensorBoard. On ``--resume`` the writer purges events after the resumed step, so
a run interrupted mid-epoch shows one curve, not two.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from torch.utils.tensorboard import SummaryWriter

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """One run's event writer; every method is a no-op after :meth:`close`."""

    def __init__(self, run_dir: Path, *, resume_step: Optional[int] = None) -> None:
        self.dir = Path(run_dir) / TENSORBOARD_DIR
        # purge_step: events at this step and later (written after the saved state) are dropped
        self.writer: Optional[SummaryWriter] = SummaryWriter(str(self.dir), purge_step=resume_step)

    def step(self, global_step: int, *, loss: float, lr: float, step_time_s: float) -> None:
        """One optimiser step's scalars."""
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", loss, global_step)
        self.writer.add_scalar("train/lr", lr, global_step)
        self.writer.add_scalar("train/step_time_s", step_time_s, global_step)

    def epoch(self, global_step: int, row: dict[str, Any], prefix_scales: dict[str, list[float]]) -> None:
        """An epoch's ``metrics.jsonl`` row and the S-Prefix scales per tower and layer."""
        if self.writer is None:
            return
        for key in ("loss", "samples_per_s", "temperature"):
            if key in row:
                self.writer.add_scalar(f"epoch/{key}", row[key], global_step)
        split = row.get("split")
        for key in ("R1", "R5", "R10", "mAP", "mINP"):
            if split and key in row:
                self.writer.add_scalar(f"{split}/{key}", row[key], global_step)
        for tower, scales in prefix_scales.items():
            for layer, value in enumerate(scales):
                if not math.isnan(value):
                    self.writer.add_scalar(f"prefix_scale/{tower}/{layer:02d}", value, global_step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
