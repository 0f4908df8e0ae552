"""The resumable training state, saved without pickle.

``RUN/last/`` holds the trained weights (``petl.safetensors`` + ``petl.json``, an ordinary
PETL checkpoint) and ``state.safetensors`` + ``state.json``: optimiser moments, the loss's
learnable temperature, RNG states, the epoch reached and the best score so far, and (format 3)
the metrics rows of the epochs done, the config and the SHA-256 of ``config.yaml``. The folder
is written beside the old one and swapped in with renames, so an interrupted write leaves the
previous state intact, and an epoch's state and its metrics row are one unit. ``state.json``
records the SHA-256 of ``state.safetensors``; loading checks it, the types and ranges of
``state.json`` (:mod:`upperson.train.records`) and that the optimiser moments are finite, and
names the file when not.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from upperson.io import atomic_path, atomic_write_json, file_digest, replace_dir
from upperson.model.checkpoint import load_petl, read_verified_tensors, save_petl
from upperson.train.records import STATE_JSON, STATE_VERSION, STATE_WEIGHTS, find_state_dir, read_state_json


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_training_state(run_dir: Path, model, optimizer, loss_module, progress: dict[str, Any],
                        scaler: Optional[torch.amp.GradScaler] = None, *, history: list[dict],
                        config: dict[str, Any], config_sha256: str) -> Path:
    """Write ``run_dir/last`` atomically (temp folder, then renames), with the metrics rows of every
    epoch done (``history``), the config and ``config.yaml``'s SHA-256 in its ``state.json``."""
    final = run_dir / "last"
    tmp = run_dir / "last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_petl(model, tmp)
    opt_tensors, opt_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = _rng_state()
    loss_tensors = {f"loss.{n}": p.detach().cpu().contiguous() for n, p in loss_module.named_parameters()}
    with atomic_path(tmp / STATE_WEIGHTS) as part:
        save_file({**opt_tensors, **rng_tensors, **loss_tensors}, str(part))
        digest = file_digest(part)
    atomic_write_json(tmp / STATE_JSON, {
        "version": STATE_VERSION,
        "sha256": digest,
        "progress": progress,
        "optimizer": opt_meta,
        "rng": rng_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "config_sha256": config_sha256,
        "config": config,
        "history": history,
    })
    replace_dir(tmp, final)
    return final


def find_training_state(run_dir: Path) -> Optional[Path]:
    """The newest complete state folder of a run, if any."""
    return find_state_dir(run_dir)


def read_state_meta(state_dir: Path) -> dict[str, Any]:
    """``state.json`` of a state folder, checked (JSON, types and ranges)."""
    return read_state_json(state_dir)


def load_training_state(state_dir: Path, model, optimizer, loss_module,
                        scaler: Optional[torch.amp.GradScaler] = None, meta: Optional[dict] = None) -> dict[str, Any]:
    """Restore weights, optimiser, loss temperature, RNG and scaler; returns the progress dict.

    ``meta`` is the ``state.json`` already read and checked (so a file swapped after the check is
    not what is loaded); without it the file is read and checked here.
    """
    meta = read_state_meta(state_dir) if meta is None else meta
    tensors = read_verified_tensors(state_dir / STATE_WEIGHTS, meta.get("sha256"), recorded_in=state_dir / STATE_JSON,
                                    require_checksum=meta.get("version", 1) >= 2)
    load_petl(model, state_dir)
    _load_optimizer_state(optimizer, tensors, meta["optimizer"])
    with torch.no_grad():
        for n, p in loss_module.named_parameters():
            p.copy_(tensors[f"loss.{n}"])
    _set_rng_state(tensors, meta["rng"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta["progress"]
