"""Embedding maps kept in the app's cache folder, so a restarted app shows a computed map at once.

One map is one safetensors file, ``<cache>/embedding-maps/<key>.safetensors``. ``key`` is the
SHA-256 of everything that decides the map (:func:`map_key`: both models' keys, the content,
identity and captions of every image shown, the map's parameters and the library versions),
so a changed input looks for another file and never reads a stale one. The file holds, per
panel ``p<i>.``, the features, identities, caption pairing and 2-D coordinates; its metadata
(JSON strings) holds the key, the labels and scores, the gallery rows of each identity, the
time the map took and the SHA-256 of the tensors. Nothing is unpickled.

:func:`load_map` checks everything (no link, size, format, key, names, dtypes, shapes,
ranges, finite values, checksum) and returns None for a file that fails, with a WARNING:
the caller computes the map again and :func:`save_map` replaces the file (atomically).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from analysis.embeddings import SplitEmbeddings
from analysis.umap_plot import MapPanel
from upperson.io import atomic_write_bytes

log = logging.getLogger(__name__)

FOLDER = "embedding-maps"  # under the app's cache folder (beside the feature cache)
FORMAT, VERSION = "upperson-embedding-map", "1"
MAX_BYTES = 256 * 2**20  # 200 identities' map is a few MB
_FLOATS = ("image_features", "text_features", "xy")
_INTS = ("image_pids", "text_pids", "text_image")


class MapFileError(ValueError):
    """A map file that is not what :func:`save_map` writes (the message says what is wrong)."""


@dataclass
class StoredMap:
    """What a map file gives back: the panels, each identity's gallery rows, the seconds it took."""

    panels: list[MapPanel]
    items: dict[int, list[int]]
    seconds: float


def versions() -> dict[str, str]:
    """The versions of the libraries that compute a map (read from the package metadata: nothing is imported)."""
    out = {}
    for dist in ("umap-learn", "scikit-learn", "numpy", "numba"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def map_key(parts: dict[str, Any]) -> str:
    """The hex SHA-256 of ``parts`` (JSON with sorted keys) and of :func:`versions`."""
    text = json.dumps({"format": FORMAT, "version": VERSION, "libraries": versions(), **parts}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_of(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}.safetensors"


def _tensors(panels: Sequence[MapPanel]) -> dict[str, torch.Tensor]:
    """Each panel's arrays as tensors of their own (copies: two panels may share one array)."""
    out: dict[str, torch.Tensor] = {}
    for i, p in enumerate(panels):
        e = p.emb
        out[f"p{i}.image_features"] = e.image_features.detach().float().clone().contiguous()
        out[f"p{i}.text_features"] = e.text_features.detach().float().clone().contiguous()
        out[f"p{i}.xy"] = torch.tensor(np.asarray(p.xy, dtype=np.float32))
        for name in _INTS:
            out[f"p{i}.{name}"] = torch.tensor(np.asarray(getattr(e, name), dtype=np.int64))
    return out


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def save_map(folder: Path, key: str, stored: StoredMap) -> Path:
    """Write ``stored`` as the file of ``key`` (atomically: temp file, fsync, rename)."""
    tensors = _tensors(stored.panels)
    meta = {"format": FORMAT, "version": VERSION, "key": key, "sha256": _checksum(tensors),
            "panels": json.dumps([{"label": p.label, "scores": p.scores} for p in stored.panels]),
            "items": json.dumps({str(pid): rows for pid, rows in stored.items.items()}),
            "seconds": repr(float(stored.seconds))}
    path = path_of(folder, key)
    atomic_write_bytes(path, safetensors_save(tensors, metadata=meta))
    return path


def _read(path: Path) -> bytes:
    """The file's bytes, read once through one descriptor (a link is refused, the size is limited)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise MapFileError("a symbolic link" if exc.errno == errno.ELOOP else str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_BYTES:
            raise MapFileError(f"{size} bytes, over the limit of {MAX_BYTES}")
        return fh.read(MAX_BYTES + 1)


def _metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise MapFileError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, 1 << 24):
        raise MapFileError("header longer than the file")
    meta = json.loads(data[8:8 + n]).get("__metadata__")
    if not isinstance(meta, dict):
        raise MapFileError("no metadata")
    return meta


def _score(value: object) -> float:
    if value is None:  # JSON of a NaN silhouette (one identity per cluster) is written as NaN; accept null too
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MapFileError(f"score {value!r} is not a number")
    return float(value)


def _panel(i: int, state: dict[str, torch.Tensor], info: object) -> MapPanel:
    """Panel ``i`` of a file's tensors, with every shape, dtype and range checked."""
    t = {name: state[f"p{i}.{name}"] for name in _FLOATS + _INTS}
    for name in _FLOATS:
        if t[name].dtype != torch.float32 or t[name].ndim != 2 or not bool(torch.isfinite(t[name]).all()):
            raise MapFileError(f"panel {i} {name}: {t[name].dtype} {tuple(t[name].shape)}, expected finite float32 2-D")
    for name in _INTS:
        if t[name].dtype != torch.int64 or t[name].ndim != 1:
            raise MapFileError(f"panel {i} {name}: {t[name].dtype} {tuple(t[name].shape)}, expected int64 1-D")
    n_img, n_txt = len(t["image_pids"]), len(t["text_pids"])
    img, txt, xy = t["image_features"], t["text_features"], t["xy"]
    if img.shape[0] != n_img or txt.shape[0] != n_txt or len(t["text_image"]) != n_txt \
            or img.shape[1] != txt.shape[1] or tuple(xy.shape) != (n_img + n_txt, 2):
        raise MapFileError(f"panel {i}: shapes do not fit together")
    pairing = t["text_image"]
    if n_txt and (int(pairing.min()) < 0 or int(pairing.max()) >= n_img):
        raise MapFileError(f"panel {i}: a caption points at no image")
    if not isinstance(info, dict) or not isinstance(info.get("label"), str) or not isinstance(info.get("scores"), dict):
        raise MapFileError(f"panel {i}: label or scores missing")
    scores = {"R1": _score(info["scores"].get("R1")), "silhouette": _score(info["scores"].get("silhouette"))}
    emb = SplitEmbeddings(img.clone(), t["image_pids"].numpy().copy(), txt.clone(), t["text_pids"].numpy().copy(),
                          pairing.numpy().copy(), 0)
    return MapPanel(info["label"], emb, xy.numpy().astype(np.float64), scores)


def read_map(path: Path, key: str) -> StoredMap:
    """The map in ``path``, checked against ``key``; MapFileError says what is wrong."""
    data = _read(path)
    meta = _metadata(data)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise MapFileError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
    if meta.get("key") != key:
        raise MapFileError("written for other inputs (its key differs from its name)")
    try:
        infos = json.loads(meta["panels"])
        items_raw = json.loads(meta["items"])
        seconds = float(meta["seconds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MapFileError(f"metadata unreadable ({exc})") from None
    if not isinstance(infos, list) or not infos or not isinstance(items_raw, dict) or not math.isfinite(seconds):
        raise MapFileError("metadata has the wrong shape")
    state = safetensors_load(data)
    expected = {f"p{i}.{name}" for i in range(len(infos)) for name in _FLOATS + _INTS}
    if set(state) != expected:
        raise MapFileError(f"tensors {sorted(state)[:4]}..., expected {len(expected)} of {len(infos)} panels")
    if meta.get("sha256") != _checksum(state):
        raise MapFileError("checksum mismatch (changed outside this program)")
    panels = [_panel(i, state, info) for i, info in enumerate(infos)]
    try:
        items = {int(pid): [int(r) for r in rows] for pid, rows in items_raw.items()}
    except (TypeError, ValueError):
        raise MapFileError("identity rows are not whole numbers") from None
    shown = set(panels[0].emb.image_pids.tolist())
    if set(items) != shown or any(set(p.emb.image_pids.tolist()) != shown for p in panels):
        raise MapFileError("the identities of the panels and of the rows differ")
    return StoredMap(panels, items, seconds)


def load_map(folder: Path, key: str) -> Optional[StoredMap]:
    """The stored map of ``key``, or None (no file yet; or a bad one, logged as a WARNING, to be recomputed)."""
    path = path_of(folder, key)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return read_map(path, key)
    except Exception as exc:  # MapFileError, OSError, or safetensors' own error on a damaged payload
        log.warning("embedding map %s is not usable (%s); computing it again", path, exc)
        return None
