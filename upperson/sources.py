"""Which model is meant: the embedded default, a checkpoint, a run, or the zero-shot counterpart of one.

- no checkpoint or run: the embedded model (``upperson.embedded``);
- ``--checkpoint PATH``: a PETL checkpoint folder (``petl.safetensors`` + ``petl.json``), or
  ``hf-hub:ORG/NAME[@revision]`` (``upperson.hub``);
- ``--run RUN_DIR``: a training run folder; its ``best/`` checkpoint (else the newest
  checkpoint folder in it);
- ``zero_shot``: the zero-shot counterpart of any of them (:func:`zero_shot_of`).

One resolver, :func:`load_source`, for the demo, the analysis and the CLI. The zero-shot
counterpart of a model is the same backbone with every component off; it shares the model's
backbone weight tensors (no file is read again, no second backbone stays in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union, overload

from upperson.embedded import load_embedded_model, zero_shot_config
from upperson.hub import checkpoint_folder
from upperson.model import UPPerson, build_model
from upperson.model.checkpoint import load_model
from upperson.train.run import Run

log = logging.getLogger(__name__)

#: the embedded variants ``load_source(variant=...)`` knows
VARIANTS = ("upperson", "zero-shot")

PathLike = Union[str, Path]


@dataclass
class ModelSource:
    """A model and a human-readable name of where it came from."""

    model: UPPerson
    label: str
    checkpoint: Optional[Path] = None  # None: the embedded default


@dataclass(frozen=True)
class SourceSpec:
    """Which model is meant: a checkpoint folder or a run folder (neither: the embedded model);
    ``pretrained`` overrides the backbone weights a checkpoint recorded; ``zero_shot`` asks for
    the zero-shot counterpart of that model."""

    checkpoint: Optional[PathLike] = None
    run: Optional[PathLike] = None
    pretrained: Optional[str] = None
    zero_shot: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint and self.run:
            raise ValueError("give --checkpoint or --run, not both")


def find_run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint folder of a run: ``best/``, else the newest folder holding ``petl.json``."""
    return Run(run_dir).find_checkpoint()


def resolve_checkpoint(checkpoint: Optional[PathLike] = None, run: Optional[PathLike] = None) -> Optional[Path]:
    """The checkpoint folder named by ``--checkpoint`` or ``--run`` (None: the embedded default)."""
    if checkpoint and run:
        raise ValueError("give --checkpoint or --run, not both")
    if run:
        return find_run_checkpoint(Path(run))
    if checkpoint:
        return checkpoint_folder(checkpoint)  # a path, or hf-hub:ORG/NAME[@revision] from the local HF cache
    return None


def load_source(spec: Union[SourceSpec, PathLike, None] = None, run: Optional[PathLike] = None, *,
                pretrained: Optional[str] = None, variant: str = "upperson") -> ModelSource:
    """The model ``spec`` means, in eval mode.

    ``load_source(checkpoint, run, pretrained=..., variant=...)`` is the same as
    ``load_source(SourceSpec(checkpoint, run, pretrained, zero_shot=variant == "zero-shot"))``.
    """
    if isinstance(spec, SourceSpec):
        if run is not None or pretrained is not None or variant != "upperson":
            raise TypeError("load_source: give a SourceSpec or the separate arguments, not both")
    else:
        if variant not in VARIANTS:
            raise ValueError(f"unknown embedded variant {variant!r}; choose from {', '.join(VARIANTS)}")
        spec = SourceSpec(spec, run, pretrained, zero_shot=variant == "zero-shot")
    ckpt = resolve_checkpoint(spec.checkpoint, spec.run)
    if ckpt is None:
        source = ModelSource(load_embedded_model("upperson").eval(), "embedded upperson")
    else:
        source = ModelSource(load_model(ckpt, pretrained=spec.pretrained).eval(), str(ckpt), ckpt)
    return zero_shot_of(source) if spec.zero_shot else source


@overload
def zero_shot_of(model: UPPerson) -> UPPerson: ...


@overload
def zero_shot_of(model: ModelSource) -> ModelSource: ...


def zero_shot_of(model: Union[UPPerson, ModelSource]) -> Union[UPPerson, ModelSource]:
    """The frozen backbone of ``model`` with every PETL component off, in eval mode (of a
    :class:`ModelSource`: a source, labelled so).

    Its parameters are ``model``'s backbone tensors themselves (the same storage), so it costs
    no second backbone and reads no file; features equal those of the backbone built from its
    file. A full fine-tune changed its backbone: its counterpart is the backbone it started
    from, read again from ``model.config.pretrained`` (logged).
    """
    if isinstance(model, ModelSource):
        zs = zero_shot_of(model.model)
        if model.checkpoint is None and model.label.startswith("embedded"):
            return ModelSource(zs, "embedded zero-shot")
        return ModelSource(zs, f"zero-shot ({zs.config.pretrained or 'random init'})")
    cfg = zero_shot_config(dataclasses.replace(model.config, freeze_backbone=True))
    if not model.config.freeze_backbone:
        log.warning("a full fine-tune: its zero-shot counterpart is the backbone it started from (%s), read again",
                    cfg.pretrained)
        return build_model(cfg).eval()
    # built without weights (a seeded random init, no file read), then given the model's own tensors
    with _no_random_init_warning():
        zs = build_model(dataclasses.replace(cfg, pretrained=None))
    src, own = model.state_dict(), zs.state_dict()
    bad = [k for k, v in own.items() if k not in src or src[k].shape != v.shape]
    if bad:
        log.warning("zero-shot model: %d backbone tensors do not match (e.g. %s); loading its weights", len(bad), bad[:2])
        return build_model(cfg).eval()
    zs.load_state_dict({k: src[k] for k in own}, strict=True, assign=True)  # assign: share, do not copy
    zs.to(next(model.parameters()).device)  # the buffers outside the state dict (attention masks) follow
    zs.config = cfg  # its weights are those of cfg.pretrained, as the model's are
    zs.backbone_fingerprint = model.backbone_fingerprint  # same weights as the source model
    return zs.eval()


class _DropRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "RANDOMLY initialised" not in record.getMessage()


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    """Silence the backbone's random-init warning: this init is replaced at once by real weights."""
    logger, drop = logging.getLogger("upperson.model.backbone"), _DropRandomInit()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
