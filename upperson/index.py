"""A content-keyed cache of image embeddings, shared by the demo and the analysis.

Features are keyed twice:

- by the **model** (:func:`model_key`): its config, its backbone fingerprint and its
  trainable (PETL) weights, so a different checkpoint of the same backbone gets its own cache;
- by each **file's content** (SHA-1 of its bytes), so renaming or moving an image reuses its
  row, while a changed file is encoded again.

Layout: ``<cache_dir>/<model_key>/images.safetensors`` holds two tensors, ``features``
(N, D) float32, L2-normalised, and ``sha1`` (N, 20) uint8, row i the digest of the file
that gave feature i. Keeping both in one file makes every update a single atomic rename: a
reader never sees features and their map out of step. ``meta.json`` beside it says which
model the folder belongs to (for people; the code does not need it). Nothing is unpickled.

Indexing a list of files encodes only the files whose content is not in the cache yet
(incremental re-indexing); unreadable files (not an image, truncated, missing) are skipped,
counted and named in a warning, never fatal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from upperson.config import to_dict
from upperson.io import atomic_path, atomic_write_json, file_digest

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
FEATURES_NAME = "images.safetensors"
META_NAME = "meta.json"
FORMAT = "upperson-image-index"
FORMAT_VERSION = 1
_DIGEST_BYTES = 20  # SHA-1


def model_key(model: torch.nn.Module) -> str:
    """A short hex key of everything that decides a model's image features.

    Hashes the model config (JSON, without ``pretrained``: the weights themselves are
    covered by the backbone fingerprint), ``model.backbone_fingerprint`` and every trainable
    parameter (name, shape, float32 bytes). Two PETL checkpoints on one backbone therefore
    get different keys, and the same weights loaded from another path get the same key.
    """
    from upperson.model.checkpoint import trainable_state_dict

    if getattr(model, "is_merged", False):
        raise ValueError("model_key needs the model itself, not its merged copy (its PETL weights are folded in)")
    cfg = to_dict(model.config)
    cfg.pop("pretrained", None)
    h = hashlib.sha256()
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update(str(getattr(model, "backbone_fingerprint", "")).encode())
    for name, tensor in sorted(trainable_state_dict(model).items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:24]


def file_sha1(path: PathLike) -> str:
    """Hex SHA-1 of a file's bytes."""
    return file_digest(path, "sha1")


def _load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully as RGB; any failure raises (the caller skips the file)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


@dataclasses.dataclass
class IndexResult:
    """Features of the readable files, in the order they were given."""

    features: torch.Tensor  # (N, D) float32, L2-normalised
    paths: list[Path]  # the N files kept
    skipped: list[tuple[Path, str]]  # (file, reason) for every file that could not be read
    encoded: int  # how many of the kept files were encoded now (not found in the cache)


class ImageIndex:
    """The on-disk feature cache of one model: ``embed(paths)`` returns cached or new features.

    Thread-safe within a process (one lock around reading, encoding and writing the cache);
    across processes the atomic writes keep the file whole (the last writer wins, and
    anything it lacks is encoded again next time).
    """

    def __init__(self, model: torch.nn.Module, cache_dir: PathLike, *, batch_size: int = 64,
                 progress: bool = True, key: Optional[str] = None) -> None:
        self.model = model
        self.key = key or model_key(model)
        self.dir = Path(cache_dir) / self.key
        self.batch_size = int(batch_size)
        self.progress = progress
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self._features: Optional[torch.Tensor] = None
        self._load()

    # ------------------------------------------------------------------ storage
    @property
    def path(self) -> Path:
        """The safetensors file of this model's features."""
        return self.dir / FEATURES_NAME

    def __len__(self) -> int:
        return len(self._rows)

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            state = load_file(str(self.path))
            feats, digests = state["features"].float(), state["sha1"]
            if feats.ndim != 2 or digests.shape != (feats.shape[0], _DIGEST_BYTES):
                raise ValueError(f"shapes features {tuple(feats.shape)}, sha1 {tuple(digests.shape)}")
        except Exception as exc:  # a corrupt cache is rebuilt, not fatal
            log.warning("ignoring unreadable embedding cache %s (%s); it will be rebuilt", self.path, exc)
            return
        self._features = feats
        self._rows = {bytes(d).hex(): i for i, d in enumerate(digests.numpy())}

    def _save(self) -> None:
        assert self._features is not None
        digests = np.zeros((len(self._rows), _DIGEST_BYTES), dtype=np.uint8)
        for hexdigest, row in self._rows.items():
            digests[row] = np.frombuffer(bytes.fromhex(hexdigest), dtype=np.uint8)
        with atomic_path(self.path) as tmp:
            save_file({"features": self._features.contiguous(), "sha1": torch.from_numpy(digests)},
                      str(tmp), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
        atomic_write_json(self.dir / META_NAME, {
            "format": FORMAT, "version": FORMAT_VERSION, "model_key": self.key,
            "model": to_dict(self.model.config),
            "backbone_fingerprint": str(getattr(self.model, "backbone_fingerprint", "")),
            "images": len(self._rows), "dim": int(self._features.shape[1]),
        })

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def _encode(self, images: list[torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        batch = torch.stack(images).to(device)
        return F.normalize(model.encode_image(batch).float(), dim=-1).cpu()

    def embed(self, paths: Sequence[PathLike]) -> IndexResult:
        """Features of ``paths`` (in order), encoding only files whose content is new."""
        from upperson.data import build_transforms
        from upperson.evaluation import inference_model

        transform = build_transforms(self.model.image_size, train=False)
        with self._lock:
            kept: list[tuple[Path, str]] = []
            skipped: list[tuple[Path, str]] = []
            todo: dict[str, Path] = {}  # digest -> first file with that content
            for p in (Path(x) for x in paths):
                try:
                    digest = file_sha1(p)
                except OSError as exc:
                    skipped.append((p, f"cannot read ({exc.strerror or exc})"))
                    continue
                if digest not in self._rows and digest not in todo:
                    todo[digest] = p
                kept.append((p, digest))

            bad: set[str] = set()
            new_digests: list[str] = []
            new_feats: list[torch.Tensor] = []
            items = list(todo.items())
            was_training = self.model.training
            # LoRA and prefix folded (same features, see UPPerson.merged), made once per call
            encoder = inference_model(self.model) if items else None
            bar = tqdm(total=len(items), desc="indexing images", unit="img",
                       disable=not self.progress or not items, leave=False)
            try:
                for start in range(0, len(items), self.batch_size):
                    pixels, digests = [], []
                    for digest, p in items[start:start + self.batch_size]:
                        try:
                            pixels.append(transform(_load_rgb(p)))
                            digests.append(digest)
                        except Exception as exc:
                            bad.add(digest)
                            skipped.append((p, f"not a readable image ({type(exc).__name__}: {exc})"))
                    if pixels:
                        new_feats.append(self._encode(pixels, encoder))
                        new_digests.extend(digests)
                    bar.update(len(items[start:start + self.batch_size]))
            finally:
                bar.close()
                encoder = None
                self.model.train(was_training)

            if new_feats:
                added = torch.cat(new_feats)
                base = 0 if self._features is None else self._features.shape[0]
                self._features = added if self._features is None else torch.cat([self._features, added])
                for i, digest in enumerate(new_digests):
                    self._rows[digest] = base + i
                self._save()

            # a file whose content equals a bad file is skipped too
            bad_paths = {p for p, _ in skipped}
            for p, digest in kept:
                if digest in bad and p not in bad_paths:
                    skipped.append((p, "not a readable image (same content as another unreadable file)"))
            kept = [(p, d) for p, d in kept if d not in bad]
            if skipped:
                names = ", ".join(f"{p.name} ({why})" for p, why in skipped[:20])
                more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
                log.warning("skipped %d of %d file(s): %s%s", len(skipped), len(paths), names, more)
            if kept:
                assert self._features is not None
                rows = torch.tensor([self._rows[d] for _, d in kept], dtype=torch.long)
                feats = self._features[rows].clone()
            else:
                dim = 0 if self._features is None else int(self._features.shape[1])
                feats = torch.zeros(0, dim)
            return IndexResult(feats, [p for p, _ in kept], skipped, len(new_digests))


def embed_image_files(model: torch.nn.Module, paths: Sequence[PathLike], *, cache_dir: PathLike,
                      batch_size: int = 64, progress: bool = True
                      ) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """One-call form of :class:`ImageIndex`: ``(features, kept_paths, skipped)``."""
    result = ImageIndex(model, cache_dir, batch_size=batch_size, progress=progress).embed(paths)
    return result.features, result.paths, result.skipped
