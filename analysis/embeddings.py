"""Test-split embeddings of a model, cached on disk.

Image features come from ``upperson.index`` (the cache the demo shares: keyed by the model
and by each file's content). Caption features are cached beside them, in the same model
folder, as ``texts.safetensors`` (features + the SHA-1 of each caption's text), so a
second ``umap`` run on the same model encodes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from upperson.data import CaptionTokenizer, ImageRecord
from upperson.evaluation import encode_texts
from upperson.index import ImageIndex, model_key
from upperson.io import atomic_path
from upperson.model import UPPerson

log = logging.getLogger(__name__)

TEXTS_NAME = "texts.safetensors"


def default_cache_dir() -> Path:
    """``<upperson cache>/index``: the image index the demo uses too."""
    from upperson.embedded import cache_dir

    return cache_dir() / "index"


def _sha1(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


def embed_captions(model: UPPerson, tokenizer: CaptionTokenizer, captions: Sequence[str], cache_dir: Path,
                   *, key: Optional[str] = None) -> tuple[torch.Tensor, int]:
    """L2-normalised features of ``captions`` (in order) and how many were encoded now."""
    folder = Path(cache_dir) / (key or model_key(model))
    path = folder / TEXTS_NAME
    rows: dict[bytes, int] = {}
    feats: Optional[torch.Tensor] = None
    if path.exists():
        try:
            state = load_file(str(path))
            feats = state["features"].float()
            rows = {bytes(d): i for i, d in enumerate(state["sha1"].numpy())}
        except Exception as exc:  # a broken cache is rebuilt
            log.warning("ignoring unreadable caption cache %s (%s)", path, exc)
            feats, rows = None, {}
    digests = [_sha1(c) for c in captions]
    todo: dict[bytes, str] = {}
    for d, c in zip(digests, captions):
        if d not in rows and d not in todo:
            todo[d] = c
    if todo:
        was_training = model.training
        model.eval()
        try:
            new = encode_texts(model, tokenizer(list(todo.values())), precision="fp32")
        finally:
            model.train(was_training)
        base = 0 if feats is None else feats.shape[0]
        feats = new if feats is None else torch.cat([feats, new])
        for i, d in enumerate(todo):
            rows[d] = base + i
        sha = np.zeros((len(rows), 20), dtype=np.uint8)
        for d, i in rows.items():
            sha[i] = np.frombuffer(d, dtype=np.uint8)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": feats.contiguous(), "sha1": torch.from_numpy(sha)}, str(tmp))
    if not digests:
        return torch.zeros(0, 0), 0
    assert feats is not None
    return feats[torch.tensor([rows[d] for d in digests])].clone(), len(todo)


@dataclass
class SplitEmbeddings:
    """Images and captions of some records, with their identities and pairing."""

    image_features: torch.Tensor  # (N, D)
    image_pids: np.ndarray  # (N,)
    text_features: torch.Tensor  # (M, D)
    text_pids: np.ndarray  # (M,)
    text_image: np.ndarray  # (M,) index of each caption's own image
    encoded: int  # images + captions encoded now (0 = everything came from the cache)


def embed_records(model: UPPerson, tokenizer: CaptionTokenizer, records: Sequence[ImageRecord],
                  cache_dir: Optional[Path] = None, *, progress: bool = True) -> SplitEmbeddings:
    """Features of every image of ``records`` and every caption, from the cache where possible."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = model_key(model)
    index = ImageIndex(model, cache_dir, key=key, progress=progress)
    result = index.embed([r.path for r in records])
    kept = {Path(p): i for i, p in enumerate(result.paths)}
    keep = [r for r in records if Path(r.path) in kept]
    if len(keep) < len(records):
        log.warning("%d of %d images could not be read and are left out", len(records) - len(keep), len(records))
    img = result.features[torch.tensor([kept[Path(r.path)] for r in keep], dtype=torch.long)]
    captions, text_pids, text_image = [], [], []
    for i, r in enumerate(keep):
        for c in r.captions:
            captions.append(c)
            text_pids.append(r.pid)
            text_image.append(i)
    txt, n_txt = embed_captions(model, tokenizer, captions, cache_dir, key=key)
    encoded = result.encoded + n_txt
    log.info("embeddings of %d images and %d captions (%d encoded now, the rest cached in %s)",
             len(keep), len(captions), encoded, cache_dir / key)
    return SplitEmbeddings(img, np.array([r.pid for r in keep]), txt, np.array(text_pids),
                           np.array(text_image, dtype=int), encoded)
