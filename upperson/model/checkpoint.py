"""Save and load the trained (PETL) weights: safetensors plus a JSON config.

A checkpoint is a folder with ``petl.safetensors`` (only the trainable parameters: the
PETL components, or the whole backbone for a full fine-tune) and ``petl.json`` (the model
config and the backbone's identity). Loading checks that the backbone matches and says
plainly what does not. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file, save_file

from upperson.config import ModelConfig, from_dict, to_dict
from upperson.io import atomic_path, atomic_write_json
from upperson.model.backbone import describe_source
from upperson.model.upperson import UPPerson, build_model

log = logging.getLogger(__name__)

WEIGHTS_NAME = "petl.safetensors"
CONFIG_NAME = "petl.json"
FORMAT = "upperson-petl"
FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to the model it is loaded into."""


def _paths(path: Union[str, Path]) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.parent
    return path / WEIGHTS_NAME, path / CONFIG_NAME


def trainable_state_dict(model: UPPerson) -> dict[str, torch.Tensor]:
    """The parameters that train (PETL only unless the backbone is unfrozen), in float32."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_petl(model: UPPerson, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write ``petl.safetensors`` and ``petl.json`` into folder ``path``, atomically."""
    weights, config = _paths(path)
    state = trainable_state_dict(model)
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": to_dict(model.config),
        "backbone": {
            "name": model.config.name,
            "quick_gelu": model.config.quick_gelu,
            "image_size": list(model.config.image_size),
            "weights": describe_source(model.config),
            "fingerprint": model.backbone_fingerprint,
        },
        "parameters": sum(v.numel() for v in state.values()),
        "extra": extra or {},
    }
    atomic_write_json(config, meta)
    return weights.parent


def read_checkpoint_config(path: Union[str, Path]) -> dict:
    """The JSON side of a checkpoint, validated."""
    weights, config = _paths(path)
    if not config.exists() or not weights.exists():
        raise FileNotFoundError(f"no UP-Person checkpoint at {Path(path)} (expected {WEIGHTS_NAME} and {CONFIG_NAME})")
    try:
        meta = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointMismatchError(f"{config}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{config}: not an UP-Person checkpoint (format {meta.get('format')!r})")
    return meta


def checkpoint_model_config(path: Union[str, Path], pretrained: Optional[str] = None) -> ModelConfig:
    """The model config a checkpoint was trained with; ``pretrained`` replaces the weights path."""
    cfg = from_dict(ModelConfig, read_checkpoint_config(path)["model"], "checkpoint model")
    if pretrained is not None:
        cfg = dataclasses.replace(cfg, pretrained=pretrained)
    return cfg


def load_petl(model: UPPerson, path: Union[str, Path], *, strict_backbone: bool = True) -> dict:
    """Load a checkpoint's weights into ``model`` after checking that it belongs there.

    Raises :class:`CheckpointMismatchError` naming every difference. With
    ``strict_backbone=False`` a different backbone *weights* fingerprint only warns.
    """
    weights, _ = _paths(path)
    meta = read_checkpoint_config(path)
    bb = meta.get("backbone", {})
    problems = []
    cfg = model.config
    if bb.get("name") != cfg.name:
        problems.append(f"backbone: checkpoint {bb.get('name')!r}, model {cfg.name!r}")
    if list(bb.get("image_size", [])) != list(cfg.image_size):
        problems.append(f"image size: checkpoint {bb.get('image_size')}, model {list(cfg.image_size)}")
    if bb.get("quick_gelu") != cfg.quick_gelu:
        problems.append(f"quick_gelu: checkpoint {bb.get('quick_gelu')}, model {cfg.quick_gelu}")
    state = load_file(str(weights))
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{n}: checkpoint {tuple(state[n].shape)}, model {tuple(own[n].shape)}"
              for n in sorted(set(own) & set(state)) if state[n].shape != own[n].shape]
    if missing:
        problems.append(f"{len(missing)} trainable parameter(s) missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} parameter(s) the model does not have, e.g. {unexpected[:3]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}")
    if not problems and bb.get("fingerprint") != model.backbone_fingerprint:
        msg = (f"backbone weights differ: checkpoint was trained on {bb.get('weights')!r} "
               f"(fingerprint {bb.get('fingerprint')}), model has {describe_source(cfg)!r} "
               f"(fingerprint {model.backbone_fingerprint})")
        if strict_backbone:
            problems.append(msg)
        else:
            log.warning(msg)
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {weights.parent} does not fit this model:\n  - " + "\n  - ".join(problems)
        )
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(state[n].to(p.dtype))
    return meta


def load_model(path: Union[str, Path], *, pretrained: Optional[str] = None, strict_backbone: bool = True) -> UPPerson:
    """Build the checkpoint's model (backbone from ``pretrained`` or the recorded path) and load it."""
    cfg = checkpoint_model_config(path, pretrained)
    model = build_model(cfg)
    load_petl(model, path, strict_backbone=strict_backbone)
    return model
