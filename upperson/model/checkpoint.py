"""Save and load the trained (PETL) weights: safetensors plus a JSON config.

A checkpoint is a folder with ``petl.safetensors`` (only the trainable parameters: the
PETL components, or the whole backbone for a full fine-tune) and ``petl.json`` (the model
config and the backbone's identity). Loading checks that the backbone matches and says
plainly what does not. Nothing is unpickled.

``petl.json`` records the SHA-256 of ``petl.safetensors`` (format version 2); loading checks
it, and that every weight is finite, and names the file when either fails. Version-1
checkpoints (no checksum) still load, with a warning. A backbone file path is recorded
relative to the checkpoint folder (and absolute, as a fallback), and resolved against the
checkpoint folder when loading, never the current directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from upperson.config import ModelConfig, from_dict, to_dict
from upperson.io import atomic_copy, atomic_path, atomic_write_json, file_digest
from upperson.model.backbone import EMBEDDED, UNUSED_KEYS, describe_source, is_random_init
from upperson.model.upperson import UPPerson, build_model, component_of
from upperson.model.weights import UnsafeWeightsError, check_weights

log = logging.getLogger(__name__)

WEIGHTS_NAME = "petl.safetensors"
CONFIG_NAME = "petl.json"
FORMAT = "upperson-petl"
FORMAT_VERSION = 3  # 2: petl.json records the sha256 of petl.safetensors; 3: the config is bound to the weights
BINDING_KEY = "binding"  # safetensors header metadata: the canonical model config, backbone identity, sidecar files
_BACKBONE_BOUND = ("name", "quick_gelu", "image_size", "weights", "fingerprint")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to the model it is loaded into."""


class CheckpointCorruptError(ValueError):
    """A checkpoint or state file that is truncated, corrupted, or holds non-finite numbers."""


def read_verified_tensors(weights: Path, expected_sha256: Optional[str], *, recorded_in: Path,
                          require_checksum: bool, warn_unverified: bool = True) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its SHA-256 against the one recorded in ``recorded_in``.

    Raises :class:`CheckpointCorruptError` naming the file when the checksum is missing (and
    required), differs, the file cannot be parsed, or a floating-point tensor is not finite
    (as stored, or cast to float32).
    """
    state, _ = _read_checksummed(weights, expected_sha256, recorded_in=recorded_in,
                                 require_checksum=require_checksum, warn_unverified=warn_unverified)
    # finite as stored, and once cast to float32 (a float64 1e300 is inf there)
    bad = [n for n, t in state.items()
           if t.is_floating_point() and not (bool(torch.isfinite(t).all()) and bool(torch.isfinite(t.float()).all()))]
    if bad:
        raise CheckpointCorruptError(
            f"{weights} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. {bad[:3]}; "
            "it cannot be used"
        )
    return state


def _read_checksummed(weights: Path, expected_sha256: Optional[str], *, recorded_in: Path, require_checksum: bool,
                      warn_unverified: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and header metadata, after its SHA-256 is checked (not the values).

    The file is read once: the bytes hashed are the bytes parsed, so a file swapped after the
    check is never what loads.
    """
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (it belongs with {recorded_in})")
    data = weights.read_bytes()
    if expected_sha256 is None:
        if require_checksum:
            raise CheckpointCorruptError(f"{recorded_in} records no sha256 for {weights.name}: the file cannot be verified")
        if warn_unverified:
            log.warning("%s: an older checkpoint without a recorded checksum; its integrity is not verified", weights)
    else:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise CheckpointCorruptError(
                f"{weights} is corrupted or truncated: its sha256 is {actual[:12]}..., {recorded_in.name} records "
                f"{expected_sha256[:12]}...; restore the file (or retrain)"
            )
    try:
        state = load_bytes(data)
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
    except Exception as exc:  # safetensors raises its own SafetensorError; a bad header, a JSON error
        raise CheckpointCorruptError(
            f"{weights} cannot be read as safetensors ({type(exc).__name__}: {exc}); it is truncated or corrupted"
        ) from exc
    return state, metadata


def read_verified_weights(weights: Path, expected_sha256: Optional[str], *, recorded_in: Path,
                          require_checksum: bool, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """:func:`read_verified_tensors` for model weights: also refuses, by name, tensors that are not
    fp16, bf16 or fp32, or not finite after the cast to ``dtype`` (``upperson.model.weights``)."""
    return _verified_weights(weights, expected_sha256, recorded_in=recorded_in, require_checksum=require_checksum,
                             dtype=dtype)[0]


def _verified_weights(weights: Path, expected_sha256: Optional[str], *, recorded_in: Path, require_checksum: bool,
                      dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    state, metadata = _read_checksummed(weights, expected_sha256, recorded_in=recorded_in,
                                        require_checksum=require_checksum)
    try:
        check_weights(state, weights, dtype)
    except UnsafeWeightsError as exc:
        raise CheckpointCorruptError(str(exc)) from exc
    return state, metadata


def _is_file_path(pretrained: Optional[str]) -> bool:
    """Whether a ``model.pretrained`` value names a file (not random, embedded or an open_clip tag)."""
    if is_random_init(pretrained) or pretrained == EMBEDDED:
        return False
    p = Path(pretrained)
    return p.exists() or p.suffix in (".safetensors", ".pt", ".pth", ".bin") or "/" in pretrained or os.sep in pretrained


def _recorded_pretrained(pretrained: Optional[str], folder: Path) -> tuple[Optional[str], Optional[str]]:
    """(the form recorded in petl.json: relative to the checkpoint folder, the absolute path) for a file."""
    if not _is_file_path(pretrained) or not Path(pretrained).exists():
        return pretrained, None
    absolute = Path(pretrained).expanduser().resolve()
    try:
        return os.path.relpath(absolute, folder.resolve()), str(absolute)
    except ValueError:  # another drive (Windows)
        return str(absolute), str(absolute)


def resolve_recorded_pretrained(recorded: Optional[str], folder: Path, absolute: Optional[str] = None) -> Optional[str]:
    """The backbone a checkpoint recorded, as a usable value: a relative file path is resolved
    against the checkpoint folder, then the recorded absolute path, then (older checkpoints)
    the current directory. Raises FileNotFoundError when the file is nowhere."""
    if not _is_file_path(recorded):
        return recorded
    p = Path(recorded).expanduser()
    candidates = [p] if p.is_absolute() else [folder / p]
    if absolute:
        candidates.append(Path(absolute))
    if not p.is_absolute():
        candidates.append(p)  # checkpoints written before paths were recorded relative to the folder
    for c in candidates:
        if c.is_file():
            return str(c)
    raise FileNotFoundError(
        f"the backbone weights checkpoint {folder} was trained on ({recorded}) are not at "
        f"{', '.join(str(c) for c in dict.fromkeys(candidates))}; pass --pretrained FILE (the same weights)"
    )


def _paths(path: Union[str, Path]) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.parent
    return path / WEIGHTS_NAME, path / CONFIG_NAME


def trainable_state_dict(model: UPPerson) -> dict[str, torch.Tensor]:
    """The parameters that train (PETL only unless the backbone is unfrozen), in float32."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_petl(model: UPPerson, path: Union[str, Path], extra: Optional[dict] = None,
              files: Optional[Mapping[str, Union[str, Path]]] = None, *,
              pretrained: Optional[str] = None) -> Path:
    """Write ``petl.safetensors`` and ``petl.json`` into folder ``path``, atomically.

    ``files`` maps sidecar names (plain file names) to files copied beside the weights; their
    SHA-256 go into ``petl.json`` and, with the model config, into the weights' header (format 3).
    ``pretrained`` records that backbone value (e.g. an open_clip tag or ``embedded``, portable
    to another machine) instead of the model's own; the fingerprint still binds the weights.
    """
    if getattr(model, "is_merged", False):
        raise ValueError("a merged model (model.merged()) has its PETL weights folded in: save the original model")
    weights, config = _paths(path)
    state = trainable_state_dict(model)
    bad = [n for n, t in state.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointCorruptError(f"not saving {weights}: {len(bad)} weight(s) are not finite, e.g. {bad[:3]}")
    sidecars = {_sidecar_name(name, config): Path(src) for name, src in (files or {}).items()}
    digests = {name: file_digest(src) for name, src in sidecars.items()}
    model_dict = to_dict(model.config)
    model_dict["pretrained"], absolute = ((pretrained, None) if pretrained is not None
                                          else _recorded_pretrained(model.config.pretrained, weights.parent))
    backbone = {"name": model.config.name, "quick_gelu": model.config.quick_gelu,
                "image_size": list(model.config.image_size), "weights": describe_source(model.config),
                "fingerprint": model.backbone_fingerprint}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": model_dict,
            "backbone": {**backbone, **({"path": absolute} if absolute else {})},
            **({"files": digests} if digests else {}),
            "parameters": sum(v.numel() for v in state.values()), "extra": extra or {}}
    for name, src in sidecars.items():
        atomic_copy(src, weights.parent / name)
    return _write_bound(weights, config, state, meta)


def binding_of(meta: dict) -> dict:
    """What format 3 binds to the weights: the model config (less the backbone's path), the
    backbone's identity and the sidecar files' SHA-256, from a ``petl.json``."""
    model = {k: v for k, v in (meta.get("model") or {}).items() if k != "pretrained"}
    backbone = {k: (meta.get("backbone") or {}).get(k) for k in _BACKBONE_BOUND}
    return {"model": model, "backbone": backbone, "files": dict(meta.get("files") or {})}


def _canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _sidecar_name(name: str, config: Path) -> str:
    """``name`` if it is a plain file name that is not the checkpoint's own; else ValueError."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", "..") \
            or name in (WEIGHTS_NAME, CONFIG_NAME):
        raise CheckpointCorruptError(f"{config}: files entry {name!r} is not a plain sidecar file name")
    return name


def _differences(recorded, bound, where: str) -> list[str]:
    """Dotted keys where ``recorded`` (petl.json) and ``bound`` (the weights' header) differ."""
    if isinstance(recorded, dict) and isinstance(bound, dict):
        return [d for k in sorted(set(recorded) | set(bound))
                for d in _differences(recorded.get(k), bound.get(k), f"{where}.{k}")]
    return [] if recorded == bound else [f"{where}: petl.json says {recorded!r}, the weights were saved with {bound!r}"]


def _check_binding(weights: Path, config: Path, meta: dict, header: dict[str, str]) -> None:
    """Refuse a format-3 ``petl.json`` that differs from the config bound into the weights' ``header``,
    naming the key, then verify every sidecar file it lists."""
    try:
        bound = json.loads(header[BINDING_KEY])
    except Exception as exc:  # KeyError, JSON errors, SafetensorError (not an OSError)
        raise CheckpointCorruptError(f"{weights}: a format-3 checkpoint without a readable config binding "
                                     f"({type(exc).__name__}); restore the file (or retrain)") from exc
    diffs = _differences(binding_of(meta), bound, "")
    if diffs:
        raise CheckpointCorruptError(
            f"{config} was changed after saving: {'; '.join(d.lstrip('.') for d in diffs[:3])}; "
            "restore petl.json (the weights bind the config they were trained with)")
    folder = weights.parent.resolve()
    for name, expected in (meta.get("files") or {}).items():
        side = weights.parent / _sidecar_name(name, config)
        if not side.is_file() or side.resolve().parent != folder:
            raise CheckpointCorruptError(f"{side}: listed in {config.name} but missing (or a link out of the folder)")
        actual = file_digest(side)
        if actual != expected:
            raise CheckpointCorruptError(f"{side} is corrupted or was changed: its sha256 is {actual[:12]}..., "
                                         f"{config.name} records {str(expected)[:12]}...; restore it")


def read_checkpoint_config(path: Union[str, Path]) -> dict:
    """The JSON side of a checkpoint, validated."""
    weights, config = _paths(path)
    if not config.exists() or not weights.exists():
        hint = ""
        if (weights.parent / "best" / CONFIG_NAME).exists():
            hint = f"; it is a run folder: its checkpoint is {weights.parent / 'best'} (or use evaluate --run)"
        raise FileNotFoundError(f"no UP-Person checkpoint at {Path(path)} (expected {WEIGHTS_NAME} and {CONFIG_NAME}){hint}")
    try:
        meta = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(f"{config}: not valid JSON ({exc}); the file is truncated or corrupted") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise CheckpointMismatchError(f"{config}: not an UP-Person checkpoint (format {meta.get('format')!r})")
    return meta


def checkpoint_model_config(path: Union[str, Path], pretrained: Optional[str] = None) -> ModelConfig:
    """The model config a checkpoint was trained with; ``pretrained`` replaces the weights path.

    A recorded backbone file is resolved against the checkpoint folder (see
    :func:`resolve_recorded_pretrained`), not the current directory.
    """
    meta = read_checkpoint_config(path)
    cfg = from_dict(ModelConfig, meta["model"], "checkpoint model")
    if pretrained is not None:
        return dataclasses.replace(cfg, pretrained=pretrained)
    folder = _paths(path)[0].parent
    resolved = resolve_recorded_pretrained(cfg.pretrained, folder, meta.get("backbone", {}).get("path"))
    return dataclasses.replace(cfg, pretrained=resolved)


def load_petl(model: UPPerson, path: Union[str, Path], *, strict_backbone: bool = True) -> dict:
    """Load a checkpoint's weights into ``model`` after checking that it belongs there.

    Raises :class:`CheckpointMismatchError` naming every difference. With
    ``strict_backbone=False`` a different backbone *weights* fingerprint only warns.
    """
    meta, state = _read_verified(path)
    return _copy_into(model, _paths(path)[0], meta, state, strict_backbone)


def _read_verified(path: Union[str, Path]) -> tuple[dict, dict[str, torch.Tensor]]:
    """A checkpoint's ``petl.json`` (format version checked) and its verified weights."""
    weights, config = _paths(path)
    meta = read_checkpoint_config(path)
    version = meta.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointMismatchError(f"{config}: checkpoint format version {version!r} is newer than this code reads "
                                      f"({FORMAT_VERSION}); update UP-Person")
    state, header = _verified_weights(weights, meta.get("sha256"), recorded_in=config, require_checksum=version >= 2,
                                      dtype=torch.float32)
    if version >= 3:
        _check_binding(weights, config, meta, header)
    elif version == 2:
        log.info("%s: a format-2 checkpoint; its config is not bound to the weights (only they are checksummed)",
                 config)
    return meta, state


def _copy_into(model: UPPerson, weights: Path, meta: dict, state: dict[str, torch.Tensor],
               strict_backbone: bool) -> dict:
    """Check that a read checkpoint (``meta``, ``state``) fits ``model``, then copy its weights in."""
    bb = meta.get("backbone", {})
    problems = []
    cfg = model.config
    if bb.get("name") != cfg.name:
        problems.append(f"backbone: checkpoint {bb.get('name')!r}, model {cfg.name!r}")
    if list(bb.get("image_size", [])) != list(cfg.image_size):
        problems.append(f"image size: checkpoint {bb.get('image_size')}, model {list(cfg.image_size)}")
    if bb.get("quick_gelu") != cfg.quick_gelu:
        problems.append(f"quick_gelu: checkpoint {bb.get('quick_gelu')}, model {cfg.quick_gelu}")
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
    cast = {n: state[n].to(p.dtype) for n, p in own.items()}
    bad = [f"{n} ({p.dtype})" for n, p in own.items() if not bool(torch.isfinite(cast[n]).all())]
    if bad:  # finite in the dtype the model holds them in (a half model: fp16's range)
        raise CheckpointCorruptError(f"{weights} holds values that are not finite in the model's dtype in "
                                     f"{len(bad)} tensor(s), e.g. {bad[:3]}; it cannot be used")
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(cast[n])
    return meta


def load_model(path: Union[str, Path], *, pretrained: Optional[str] = None, strict_backbone: bool = True) -> UPPerson:
    """Build the checkpoint's model (backbone from ``pretrained`` or the recorded path) and load it."""
    # read and verified once; a corrupted file fails here, before the (slower) backbone is built
    meta, state = _read_verified(path)
    model = build_model(checkpoint_model_config(path, pretrained))
    _copy_into(model, _paths(path)[0], meta, state, strict_backbone)
    return model


def upgrade_checkpoint(path: Union[str, Path]) -> Path:
    """Rewrite a format-1/2 checkpoint as format 3 in place: the same tensors, bit for bit, with
    the config binding added to the header, and ``petl.json`` at version 3 with the new SHA-256.

    The old checkpoint is verified first (checksum, dtypes, finite values); the weights are
    replaced before ``petl.json``, each atomically.
    """
    weights, config = _paths(path)
    meta, state = _read_verified(path)
    if meta.get("version", 1) >= FORMAT_VERSION:
        return weights.parent
    meta = dict(meta, version=FORMAT_VERSION)
    return _write_bound(weights, config, state, meta)


def add_sidecars(path: Union[str, Path], files: Mapping[str, Union[str, Path]]) -> Path:
    """Add sidecar files (name -> source file) to a checkpoint in place, as :func:`upgrade_checkpoint` does:
    the same tensors, bit for bit, with the new files' SHA-256 bound into the header and ``petl.json``.

    The checkpoint is verified first (an old format is upgraded to format 3 on the way); the files are
    copied, then the weights and ``petl.json`` replaced, each atomically.
    """
    weights, config = _paths(path)
    meta, state = _read_verified(path)
    sidecars = {_sidecar_name(name, config): Path(src) for name, src in files.items()}
    meta = dict(meta, version=FORMAT_VERSION,
                files={**(meta.get("files") or {}), **{n: file_digest(src) for n, src in sidecars.items()}})
    for name, src in sidecars.items():
        atomic_copy(src, weights.parent / name)
    return _write_bound(weights, config, state, meta)


def _write_bound(weights: Path, config: Path, state: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write the weights with ``meta``'s binding in their header, then ``petl.json`` with their sha256."""
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "version": str(FORMAT_VERSION),
                                             BINDING_KEY: _canonical(binding_of(meta))})
        meta["sha256"] = file_digest(tmp)
    atomic_write_json(config, meta)
    return weights.parent


def export_backbone(model: nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the backbone's own weights (no PETL parts) as safetensors, atomically.

    The keys are plain open_clip keys, so the file loads as ``model.pretrained`` for any
    model built on the same open_clip config.
    """
    clip = getattr(model, "clip", model)
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in clip.state_dict().items()
        if component_of(k) == "backbone" and k not in UNUSED_KEYS
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "upperson-backbone"})
    return Path(path)
