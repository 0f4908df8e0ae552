"""A content-keyed cache of image embeddings, shared by the demo and the analysis.

Features are keyed twice:

- by the **model** (:func:`model_key`): its config, its backbone fingerprint and its
  trainable (PETL) weights, so a different checkpoint of the same backbone gets its own cache;
- by each **file's content** (SHA-1 of its bytes), so renaming or moving an image reuses its
  row, while a changed file is encoded again.

Layout: ``<cache_dir>/<model_key>/images.safetensors`` holds two tensors, ``features``
(N, D) float32, L2-normalised, and ``sha1`` (N, 20) uint8, row i the digest of the file
that gave feature i, and a sha256 of both in its metadata. Keeping both in one file makes every
update a single atomic rename: a reader never sees features and their map out of step. A file
is read whole, links refused, and checked (format, dtypes, shapes, checksum, finite unit rows,
no digest twice) before use; one that fails is rebuilt with one warning. ``meta.json`` beside
it says which model the folder belongs to (for people; the code does not need it). Nothing is
unpickled.

Indexing a list of files encodes only the files whose content is not in the cache yet
(incremental re-indexing); unreadable files (not an image, truncated, missing, over the
:class:`IndexLimits` on bytes and pixels, changed while read) are skipped, counted and named
in a warning, never fatal. What is decoded is what was hashed: a new file's bytes are read
once, checked against its digest and decoded from memory.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from tqdm.auto import tqdm

from upperson.config import to_dict
from upperson.evaluation import encode_images
from upperson.io import atomic_write_bytes, atomic_write_json, file_digest

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
FEATURES_NAME = "images.safetensors"
META_NAME = "meta.json"
LOCK_NAME = ".lock"
FORMAT = "upperson-image-index"
FORMAT_VERSION = 2  # 2: a sha256 of the tensors in the metadata (1 had none; still read, values checked)
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


@dataclasses.dataclass(frozen=True)
class IndexLimits:
    """What one gallery file may cost before it is read: bytes on disk, and pixels (from the header).

    A file over a limit is skipped with its size and the limit named, never read (size) or
    decoded (pixels). ``follow_symlinks=False`` (the demo) refuses a file that is a link by
    the time it is read, although the gallery listing had none.
    """

    max_file_bytes: int = 50 * 2**20  # 50 MB per image
    max_pixels: int = 50_000_000  # 50 MP; PIL's own bomb limit (89 MP) only warns
    follow_symlinks: bool = True

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IndexLimits.{name} must be a whole number from 1 up; got {value!r}")


class SkipFile(Exception):
    """A gallery file that is not indexed; the message says why (for the skipped list)."""


Stamp = tuple[int, int, int, int]  # (device, inode, size, mtime_ns): changes when the file does


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_stamp(path: PathLike) -> Optional[Stamp]:
    """The stamp of ``path`` now (the link itself, not followed), or None if it cannot be stat'ed."""
    try:
        return stamp_of(os.lstat(path))
    except OSError:
        return None


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n % 2**20 else f"{n // 2**20} MB"


def _open(path: Path, limits: IndexLimits) -> tuple[int, os.stat_result]:
    """An fd and its stat for a regular file within the size limit, else SkipFile."""
    flags = os.O_RDONLY | (0 if limits.follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SkipFile("a symbolic link (not followed)") from None
        raise SkipFile(f"cannot read ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(st.st_mode):
        why = "not a regular file"
    elif st.st_size > limits.max_file_bytes:
        why = f"{_megabytes(st.st_size)}, over the limit of {_megabytes(limits.max_file_bytes)} per image"
    if why:
        os.close(fd)
        raise SkipFile(why)
    return fd, st


def fingerprint(path: Path, limits: IndexLimits) -> tuple[str, Stamp]:
    """(SHA-1 hex, stamp) of a gallery file, read once through one fd; SkipFile if it is refused or changes."""
    fd, st = _open(path, limits)
    h = hashlib.sha1()
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
        after = os.fstat(fh.fileno())
    if stamp_of(after) != stamp_of(st):
        raise SkipFile("changed while it was read")
    return h.hexdigest(), stamp_of(st)


def load_checked_rgb(path: Path, digest: str, limits: IndexLimits) -> Image.Image:
    """Decode ``path`` as RGB if its bytes still hash to ``digest`` and its header is within the pixel limit.

    The bytes are read once (at most the size limit) and decoded from memory, so what is
    decoded is what was hashed, even if the file is swapped meanwhile. Raises SkipFile.
    """
    fd, _ = _open(path, limits)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes or hashlib.sha1(data).hexdigest() != digest:
        raise SkipFile("changed while it was indexed")
    try:
        with Image.open(io.BytesIO(data)) as im:
            pixels = im.width * im.height
            if pixels > limits.max_pixels:
                raise SkipFile(f"{im.width} x {im.height} = {pixels} pixels, over the limit of "
                               f"{limits.max_pixels} pixels per image")
            im.load()
            return im.convert("RGB")
    except SkipFile:
        raise
    except Exception as exc:
        raise SkipFile(f"not a readable image ({type(exc).__name__}: {exc})") from None


@dataclasses.dataclass
class IndexResult:
    """Features of the readable files, in the order they were given."""

    features: torch.Tensor  # (N, D) float32, L2-normalised
    paths: list[Path]  # the N files kept
    skipped: list[tuple[Path, str]]  # (file, reason) for every file that could not be read
    encoded: int  # how many of the kept files were encoded now (not found in the cache)
    digests: list[str] = dataclasses.field(default_factory=list)  # SHA-1 of each kept file, as read
    stamps: list[Stamp] = dataclasses.field(default_factory=list)  # its stamp when it was read


class CacheFileError(ValueError):
    """A feature cache file that is not what this module writes (the message says what is wrong)."""


def _payload_sha256(features: torch.Tensor, digests: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(features.contiguous().numpy().tobytes())
    h.update(digests.contiguous().numpy().tobytes())
    return h.hexdigest()


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (its header is 8 bytes of length, then JSON)."""
    if len(data) < 8:
        raise CacheFileError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, 1 << 20):
        raise CacheFileError("header longer than the file")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CacheFileError("metadata is not a mapping")
    return meta


def read_cache_file(path: Path, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, sha1) of a cache file, checked: no link, size, format, dtypes, shapes, checksum, values.

    The bytes are read once (through one fd, links refused) and parsed from memory: what is
    checked is what is used, whatever happens to the file meanwhile.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise CacheFileError("a symbolic link" if exc.errno == errno.ELOOP else str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise CacheFileError(f"{_megabytes(size)}, over the limit of {_megabytes(max_bytes)}")
        data = fh.read(max_bytes + 1)
    meta = _header_metadata(data)
    if meta.get("format") != FORMAT or meta.get("version") not in ("1", str(FORMAT_VERSION)):
        raise CacheFileError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
    state = safetensors_load(data)
    if set(state) != {"features", "sha1"}:
        raise CacheFileError(f"tensors {sorted(state)}, expected features and sha1")
    feats, digests = state["features"], state["sha1"]
    if feats.dtype != torch.float32 or digests.dtype != torch.uint8:
        raise CacheFileError(f"dtypes features {feats.dtype}, sha1 {digests.dtype} (expected float32, uint8)")
    if feats.ndim != 2 or digests.shape != (feats.shape[0], _DIGEST_BYTES):
        raise CacheFileError(f"shapes features {tuple(feats.shape)}, sha1 {tuple(digests.shape)}")
    if meta.get("version") == str(FORMAT_VERSION):
        if meta.get("sha256") != _payload_sha256(feats, digests):
            raise CacheFileError("checksum mismatch (changed outside this program)")
    else:
        log.info("embedding cache %s was written before checksums; checking its values only", path)
    if not bool(torch.isfinite(feats).all()):
        raise CacheFileError("non-finite features")
    if feats.shape[0] and not bool(((feats.norm(dim=1) - 1).abs() < 1e-3).all()):
        raise CacheFileError("features are not unit vectors")
    if len({bytes(d) for d in digests.numpy()}) != digests.shape[0]:
        raise CacheFileError("a file digest appears twice")
    return feats, digests


MAX_CACHE_BYTES = 4 * 2**30  # a cache file is read whole: 4 GB is about 2 million 512-d features


class ImageIndex:
    """The on-disk feature cache of one model: ``embed(paths)`` returns cached or new features.

    Thread-safe within a process: files are hashed and new ones encoded without any lock;
    a short lock guards the rows while they are looked up or merged. Across processes an
    advisory file lock (``.lock``) serialises the writers, and each writer first merges the
    rows another process wrote since it read the file, so no writer drops another's rows.
    A cache file that fails its checks (see :func:`read_cache_file`) is rebuilt with one
    warning; a cache that cannot be written (disk full, read-only) keeps the features in
    memory with one warning, leaving no temporary file behind.
    """

    def __init__(self, model: torch.nn.Module, cache_dir: PathLike, *, batch_size: int = 64,
                 progress: bool = True, key: Optional[str] = None, limits: Optional[IndexLimits] = None,
                 max_cache_bytes: int = MAX_CACHE_BYTES) -> None:
        self.model = model
        self.key = key or model_key(model)
        self.dir = Path(cache_dir) / self.key
        self.batch_size = int(batch_size)
        self.progress = progress
        self.limits = limits or IndexLimits()
        self.max_cache_bytes = int(max_cache_bytes)
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self._features: Optional[torch.Tensor] = None
        self._disk: Optional[Stamp] = None  # the cache file's stamp when this object last read or wrote it
        self._load()

    # ------------------------------------------------------------------ storage
    @property
    def path(self) -> Path:
        """The safetensors file of this model's features."""
        return self.dir / FEATURES_NAME

    def __len__(self) -> int:
        return len(self._rows)

    def _read_disk(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The cache file's (features, sha1) if it passes its checks; None (with one warning) otherwise."""
        self._disk = file_stamp(self.path)
        if self._disk is None:
            return None
        try:
            return read_cache_file(self.path, self.max_cache_bytes)
        except Exception as exc:  # whatever is wrong with it, the cache is rebuilt, never misread
            log.warning("ignoring the embedding cache %s (%s); it will be rebuilt", self.path, exc)
            return None

    def _load(self) -> None:
        state = self._read_disk()
        if state is not None:
            self._features, digests = state
            self._rows = {bytes(d).hex(): i for i, d in enumerate(digests.numpy())}

    def _merge_disk(self) -> None:
        """Add the rows another process wrote since this object read the file (caller holds the locks)."""
        if file_stamp(self.path) == self._disk:
            return
        state = self._read_disk()
        if state is None:
            return
        feats, digests = state
        new = [i for i, d in enumerate(digests.numpy()) if bytes(d).hex() not in self._rows]
        if new:
            self._add([bytes(digests[i].numpy()).hex() for i in new], feats[torch.tensor(new)])

    def _add(self, digests: Sequence[str], feats: torch.Tensor) -> None:
        base = 0 if self._features is None else self._features.shape[0]
        self._features = feats if self._features is None else torch.cat([self._features, feats])
        for i, digest in enumerate(digests):
            self._rows[digest] = base + i

    def add_known(self, digests: Sequence[str], feats: torch.Tensor) -> int:
        """Add features computed elsewhere (an index folder made by the same model, see
        ``upperson.search``) for file contents (SHA-1 hex digests) not cached yet; returns how many
        were new. The features must be the model's, L2-normalised: the caller checks the model key."""
        if len(digests) != len(feats):
            raise ValueError(f"{len(digests)} digests for {len(feats)} features")
        with self._lock:
            new = [i for i, d in enumerate(digests) if d not in self._rows]
            keep = {}
            for i in new:
                keep.setdefault(digests[i], i)  # one row per content
            if keep:
                rows = list(keep.values())
                self._add(list(keep), feats[rows].float().contiguous())
                self._save()
            return len(keep)

    def _serialise(self) -> bytes:
        assert self._features is not None
        digests = np.zeros((len(self._rows), _DIGEST_BYTES), dtype=np.uint8)
        for hexdigest, row in self._rows.items():
            digests[row] = np.frombuffer(bytes.fromhex(hexdigest), dtype=np.uint8)
        feats, sha = self._features.contiguous(), torch.from_numpy(digests)
        return safetensors_save({"features": feats, "sha1": sha}, metadata={
            "format": FORMAT, "version": str(FORMAT_VERSION), "sha256": _payload_sha256(feats, sha)})

    def _save(self) -> None:
        """Merge what other processes wrote, then write atomically; a failed write is one warning."""
        size = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / LOCK_NAME, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._merge_disk()
                data = self._serialise()
                size = len(data)
                atomic_write_bytes(self.path, data)
                self._disk = file_stamp(self.path)
            atomic_write_json(self.dir / META_NAME, {
                "format": FORMAT, "version": FORMAT_VERSION, "model_key": self.key,
                "model": to_dict(self.model.config),
                "backbone_fingerprint": str(getattr(self.model, "backbone_fingerprint", "")),
                "images": len(self._rows), "dim": int(self._features.shape[1]),
            })
        except OSError as exc:
            need = f"; it needs about {_megabytes(size)} free" if size else ""
            log.warning("cannot write the embedding cache in %s (%s)%s: the features are kept in memory "
                        "and encoded again by the next process", self.dir, exc.strerror or exc, need)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def _encode(self, images: list[torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
        return encode_images(model, torch.stack(images))  # the evaluation's step, its mixed precision

    def _encode_new(self, todo: dict[str, Path], encoder: Optional[Callable[[], torch.nn.Module]],
                    skipped: list[tuple[Path, str]]) -> tuple[list[str], Optional[torch.Tensor], set[str]]:
        """(digests, features, bad digests) of the files in ``todo``; unreadable ones go to ``skipped``."""
        from upperson.data import build_transforms
        from upperson.evaluation import inference_model

        transform = build_transforms(self.model.image_size, train=False)
        items = list(todo.items())
        bad: set[str] = set()
        new_digests: list[str] = []
        new_feats: list[torch.Tensor] = []
        if not items:
            return new_digests, None, bad
        was_training = self.model.training
        # LoRA and prefix folded (same features, see UPPerson.merged), made once per call
        model = encoder() if encoder is not None else inference_model(self.model)
        bar = tqdm(total=len(items), desc="indexing images", unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), self.batch_size):
                pixels, digests = [], []
                for digest, p in items[start:start + self.batch_size]:
                    try:
                        pixels.append(transform(load_checked_rgb(p, digest, self.limits)))
                        digests.append(digest)
                    except SkipFile as exc:
                        bad.add(digest)
                        skipped.append((p, str(exc)))
                if pixels:
                    new_feats.append(self._encode(pixels, model))
                    new_digests.extend(digests)
                bar.update(len(items[start:start + self.batch_size]))
        finally:
            bar.close()
            if encoder is None:
                self.model.train(was_training)
        return new_digests, (torch.cat(new_feats) if new_feats else None), bad

    def embed(self, paths: Sequence[PathLike], encoder: Optional[Callable[[], torch.nn.Module]] = None) -> IndexResult:
        """Features of ``paths`` (in order), encoding only files whose content is new.

        ``encoder`` makes the model to encode new files with (called once, only if there are
        any); by default the merged copy of this index's model. A caller that shares the model
        between threads passes a factory that copies it under its own lock.
        """
        kept: list[tuple[Path, str, Stamp]] = []
        skipped: list[tuple[Path, str]] = []
        for p in (Path(x) for x in paths):
            try:
                digest, stamp = fingerprint(p, self.limits)
            except SkipFile as exc:
                skipped.append((p, str(exc)))
                continue
            kept.append((p, digest, stamp))
        with self._lock:
            known = set(self._rows)
        todo: dict[str, Path] = {}  # digest -> first file with that content
        for p, digest, _ in kept:
            if digest not in known and digest not in todo:
                todo[digest] = p
        new_digests, new_feats, bad = self._encode_new(todo, encoder, skipped)
        with self._lock:
            if new_feats is not None:
                fresh = [i for i, d in enumerate(new_digests) if d not in self._rows]
                if fresh:  # another thread may have added some meanwhile
                    self._add([new_digests[i] for i in fresh], new_feats[torch.tensor(fresh)])
                    self._save()
            return self._result(paths, kept, skipped, bad, len(new_digests))

    def _result(self, paths: Sequence[PathLike], kept: list[tuple[Path, str, Stamp]],
                skipped: list[tuple[Path, str]], bad: set[str], encoded: int) -> IndexResult:
        """The result in the caller's order (caller holds the lock); a copy of another bad file is skipped too."""
        bad_paths = {p for p, _ in skipped}
        for p, digest, _ in kept:
            if digest in bad and p not in bad_paths:
                skipped.append((p, "not a readable image (same content as another unreadable file)"))
        kept = [k for k in kept if k[1] not in bad]
        if skipped:
            names = ", ".join(f"{p.name} ({why})" for p, why in skipped[:20])
            more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
            log.warning("skipped %d of %d file(s): %s%s", len(skipped), len(paths), names, more)
        if kept:
            assert self._features is not None
            rows = torch.tensor([self._rows[d] for _, d, _ in kept], dtype=torch.long)
            feats = self._features[rows].clone()
        else:
            dim = 0 if self._features is None else int(self._features.shape[1])
            feats = torch.zeros(0, dim)
        return IndexResult(feats, [p for p, _, _ in kept], skipped, encoded,
                           [d for _, d, _ in kept], [s for _, _, s in kept])


def embed_image_files(model: torch.nn.Module, paths: Sequence[PathLike], *, cache_dir: PathLike,
                      batch_size: int = 64, progress: bool = True
                      ) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """One-call form of :class:`ImageIndex`: ``(features, kept_paths, skipped)``."""
    result = ImageIndex(model, cache_dir, batch_size=batch_size, progress=progress).embed(paths)
    return result.features, result.paths, result.skipped
