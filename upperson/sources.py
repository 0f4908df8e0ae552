"""Which model a command means: the embedded default, a checkpoint or a run.

- no ``--checkpoint``/``--run``: the embedded model (``upperson.embedded``);
- ``--checkpoint PATH``: a PETL checkpoint folder (``petl.safetensors`` + ``petl.json``);
- ``--run RUN_DIR``: a training run folder; its ``best/`` checkpoint (else the newest
  checkpoint folder in it).

The zero-shot counterpart of a model is the same backbone with every component off.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from upperson.model import UPPerson, build_model
from upperson.train.run import Run

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """A model and a human-readable name of where it came from."""

    model: UPPerson
    label: str
    checkpoint: Optional[Path] = None  # None: the embedded default


def find_run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint folder of a run: ``best/``, else the newest folder holding ``petl.json``."""
    return Run(run_dir).find_checkpoint()


def resolve_checkpoint(checkpoint: Optional[str] = None, run: Optional[str] = None) -> Optional[Path]:
    """The checkpoint folder named by ``--checkpoint`` or ``--run`` (None: the embedded default)."""
    if checkpoint and run:
        raise ValueError("give --checkpoint or --run, not both")
    if run:
        return find_run_checkpoint(Path(run))
    if checkpoint:
        return Path(checkpoint)
    return None


def load_source(checkpoint: Optional[str] = None, run: Optional[str] = None, *,
                pretrained: Optional[str] = None, variant: str = "upperson") -> ModelSource:
    """The model to analyse; ``pretrained`` overrides the backbone weights a checkpoint recorded."""
    from upperson.model.checkpoint import load_model

    ckpt = resolve_checkpoint(checkpoint, run)
    if ckpt is None:
        from upperson.embedded import load_embedded_model

        model = load_embedded_model(variant)
        return ModelSource(model.eval(), f"embedded {variant}")
    model = load_model(ckpt, pretrained=pretrained)
    return ModelSource(model.eval(), str(ckpt), ckpt)


def zero_shot_of(source: ModelSource) -> ModelSource:
    """The frozen backbone of ``source`` with every PETL component off."""
    from upperson.embedded import load_embedded_model, zero_shot_config

    if source.checkpoint is None and source.label.startswith("embedded"):
        return ModelSource(load_embedded_model("zero-shot").eval(), "embedded zero-shot")
    cfg = zero_shot_config(dataclasses.replace(source.model.config, freeze_backbone=True))
    model = build_model(cfg)
    if not source.model.config.freeze_backbone:
        log.warning("%s is a full fine-tune: its zero-shot counterpart is the backbone it started from (%s)",
                    source.label, cfg.pretrained)
    return ModelSource(model.eval(), f"zero-shot ({cfg.pretrained or 'random init'})")
