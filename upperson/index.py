"""A content-keyed cache of image embeddings, shared by the demo and the analysis.

Features are keyed twice:

- by the **model** (:func:`model_key`): its config, its backbone fingerprint and its
  trainable (PETL) weights, so a different checkpoint of the same backbone gets its own cache;
- by each **file's content** (SHA-1 of its bytes), so renaming or moving an image reuses its
  row, while a changed file is encoded again.

Layout: ``<cache_dir>/<model_key>/`` is an index folder (:mod:`upperson.search.store`: a
manifest renamed atomically, checksummed float32 segments, memory-mapped, and entry tables),
with one entry per file content, named by its SHA-1. An update appends one segment and one
entry table, so a reader never sees features and their map out of step, and nothing already
written is rewritten. The folder is checked (links refused, checksums, sizes, dtype, finite
unit rows, no digest twice) before use; one that fails is rebuilt with one warning, and so is
a cache in the older single-file format (``images.safetensors``), which is never read. Nothing
is unpickled.

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
from tqdm.auto import tqdm

from upperson.config import to_dict
from upperson.evaluation import encode_images
from upperson.io import file_digest
from upperson.search.entries import ENTRIES_DIR, Entry, EntryTable
from upperson.search.store import (LOCK, MANIFEST, SEGMENTS, IndexStore, Manifest, remove_unlisted_segments,
                                   write_manifest, write_segment)

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
LOCK_NAME = LOCK
#: the files of the cache format before index folders (a safetensors file and its notes): rebuilt, never read
OLD_FILES = ("images.safetensors", "meta.json")
#: the cache folders whose old format this process has reported (once each)
_OLD_WARNED: set[Path] = set()
#: the manifest's ``source`` and ``build.kind`` of a feature cache
CACHE_SOURCE = "feature cache"
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
    """A feature cache folder that is not what this module writes (the message says what is wrong)."""


def _no_links(folder: Path) -> None:
    """Refuse a cache whose manifest, sub-folders or listed files are symbolic links (never read through one)."""
    for p in (folder / MANIFEST, folder / SEGMENTS, folder / ENTRIES_DIR):
        if p.is_symlink():
            raise CacheFileError(f"{p.name} is a symbolic link")


def read_cache(folder: Path, key: str) -> IndexStore:
    """The cache folder of model ``key``, checked: no links, the index folder's checks (checksums,
    sizes, headers), float32, finite unit rows, and one entry per content, named by its SHA-1."""
    _no_links(folder)
    store = IndexStore.open(folder, verify=True)
    manifest = store.manifest
    for record in manifest.segments:
        if (folder / SEGMENTS / record["name"]).is_symlink():
            raise CacheFileError(f"segment {record['name']} is a symbolic link")
    if manifest.model.get("key") != key:
        raise CacheFileError(f"made by model {manifest.model.get('key')!r}, not {key!r}")
    if manifest.dtype != "float32":
        raise CacheFileError(f"{manifest.dtype} features (the cache stores float32)")
    for record, seg in zip(manifest.segments, store.segments):
        if not np.isfinite(seg).all():
            raise CacheFileError(f"non-finite features in segment {record['name']}")
        if len(seg) and not (np.abs(np.linalg.norm(seg, axis=1) - 1) < 1e-3).all():
            raise CacheFileError(f"features that are not unit vectors in segment {record['name']}")
    table = manifest.table()
    digests = [d.decode("ascii") for d in table.sha1]
    if table.paths() != digests or any(len(d) != 2 * _DIGEST_BYTES for d in digests):
        raise CacheFileError("an entry that is not named by its content's SHA-1")
    if len(set(digests)) != len(digests):
        raise CacheFileError("a file digest appears twice")
    return store


class ImageIndex:
    """The on-disk feature cache of one model: ``embed(paths)`` returns cached or new features.

    The cache is an index folder (:mod:`upperson.search.store`) with one entry per file content:
    its path and sha1 are the content's SHA-1, its features float32 in memory-mapped segments.
    An update appends a segment and an entry table and renames a new manifest into place; it
    never rewrites what is there. A cache in the format before index folders (``images.safetensors``)
    is rebuilt (one warning), never read.

    Thread-safe within a process: files are hashed and new ones encoded without any lock;
    a short lock guards the rows while they are looked up or merged. Across processes an
    advisory file lock (``.lock``) serialises the writers, and each writer first takes in the
    rows another process wrote since it read the folder, so no writer drops another's rows.
    A cache that fails its checks (see :func:`read_cache`) is rebuilt with one warning; a cache
    that cannot be written (disk full, read-only) keeps the features in memory with one
    warning, leaving no temporary file behind.
    """

    def __init__(self, model: torch.nn.Module, cache_dir: PathLike, *, batch_size: int = 64,
                 progress: bool = True, key: Optional[str] = None, limits: Optional[IndexLimits] = None) -> None:
        self.model = model
        self.key = key or model_key(model)
        self.dir = Path(cache_dir) / self.key
        self.batch_size = int(batch_size)
        self.progress = progress
        self.limits = limits or IndexLimits()
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[int, int]] = {}  # content SHA-1 -> (segment, row) in self._segments
        self._segments: list[np.ndarray] = []  # the folder's (memory-mapped), then any not written yet
        self._store: Optional[IndexStore] = None  # the folder as this object last read or wrote it
        self._disk: Optional[Stamp] = None  # the manifest's stamp then
        self._load()

    # ------------------------------------------------------------------ storage
    @property
    def path(self) -> Path:
        """The manifest of this model's cache folder."""
        return self.dir / MANIFEST

    def __len__(self) -> int:
        return len(self._rows)

    def _read_disk(self) -> Optional[IndexStore]:
        """The cache folder if it passes its checks; None (with one warning) otherwise."""
        self._disk = file_stamp(self.path)
        if self._disk is None:
            if any(os.path.lexists(self.dir / name) for name in OLD_FILES) and self.dir not in _OLD_WARNED:
                _OLD_WARNED.add(self.dir)
                log.warning("rebuilding the feature cache: old format (%s, from before caches were index "
                            "folders); its images are encoded again", self.dir / OLD_FILES[0])
            return None
        try:
            return read_cache(self.dir, self.key)
        except Exception as exc:  # whatever is wrong with it, the cache is rebuilt, never misread
            log.warning("ignoring the embedding cache %s (%s); it will be rebuilt", self.dir, exc)
            return None

    def _adopt(self, store: Optional[IndexStore]) -> None:
        """Take the folder's rows as this object's, keeping rows it has that the folder lacks."""
        unsaved = self._unsaved()
        kept = self._features_of([self._rows[d] for d in unsaved])
        self._store, self._segments, self._rows = store, [], {}
        if store is not None:
            self._segments = list(store.segments)
            table = store.manifest.table()
            self._rows = dict(zip((d.decode("ascii") for d in table.sha1),
                                  zip(table.segment.tolist(), table.row.tolist())))
        missing = [i for i, d in enumerate(unsaved) if d not in self._rows]
        if missing:
            self._add([unsaved[i] for i in missing], kept[missing])

    def _load(self) -> None:
        self._adopt(self._read_disk())

    def _unsaved(self) -> list[str]:
        """The contents whose rows are not in the folder this object last read or wrote."""
        on_disk = len(self._store.segments) if self._store is not None else 0
        return [d for d, (seg, _) in self._rows.items() if seg >= on_disk]

    def _add(self, digests: Sequence[str], feats: Union[np.ndarray, torch.Tensor]) -> None:
        """Rows for new contents, held in memory until :meth:`_save` writes them."""
        feats = feats.numpy() if isinstance(feats, torch.Tensor) else feats
        self._segments.append(np.ascontiguousarray(feats, dtype=np.float32))
        number = len(self._segments) - 1
        for i, digest in enumerate(digests):
            self._rows[digest] = (number, i)

    def _features_of(self, where: Sequence[tuple[int, int]]) -> np.ndarray:
        """float32 features at (segment, row) pairs, in order."""
        dim = self._segments[0].shape[1] if self._segments else 0
        out = np.empty((len(where), dim), dtype=np.float32)
        segs = np.fromiter((s for s, _ in where), np.int64, len(where))
        rows = np.fromiter((r for _, r in where), np.int64, len(where))
        for k in np.unique(segs):
            sel = segs == k
            out[sel] = self._segments[int(k)][rows[sel]]
        return out

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

    def _manifest(self, dim: int) -> Manifest:
        """A manifest for a new cache folder."""
        return Manifest(model={"key": self.key, "source": CACHE_SOURCE, "name": self.model.config.name,
                               "image_size": list(self.model.image_size)}, dim=dim, dtype="float32",
                        build={"kind": CACHE_SOURCE, "model": to_dict(self.model.config),
                               "backbone_fingerprint": str(getattr(self.model, "backbone_fingerprint", ""))})

    def _save(self) -> None:
        """Take in what other processes wrote, then append this object's new rows (a segment, an
        entry table, the manifest renamed into place); a failed write is one warning."""
        size = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / LOCK_NAME, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if file_stamp(self.path) != self._disk:
                    self._adopt(self._read_disk())
                new = self._unsaved()
                if not new:
                    return
                feats = self._features_of([self._rows[d] for d in new])
                size = feats.nbytes
                for p in (self.dir / MANIFEST, self.dir / SEGMENTS, self.dir / ENTRIES_DIR):
                    if p.is_symlink():  # never written through (read_cache refused it)
                        p.unlink()
                old = self._store.manifest if self._store is not None else self._manifest(feats.shape[1])
                number = len(old.segments)
                record = write_segment(self.dir, number, feats)
                entries = EntryTable.from_entries([Entry(d, number, i, d, 0, 0) for i, d in enumerate(new)])
                manifest = dataclasses.replace(old, segments=[*old.segments, record],
                                               entries=EntryTable.concat([old.table(), entries]))
                write_manifest(self.dir, manifest)  # appends one entry table (store.write_manifest)
                self._disk = file_stamp(self.path)
                remove_unlisted_segments(self.dir, manifest)
                for name in OLD_FILES:  # the format before index folders, now rebuilt
                    (self.dir / name).unlink(missing_ok=True)
                segments = list(self._store.segments) if self._store is not None else []
                segments.append(np.load(self.dir / SEGMENTS / record["name"], mmap_mode="r", allow_pickle=False))
                self._store = IndexStore(self.dir, manifest, segments)
                self._adopt(self._store)
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
        feats = torch.from_numpy(self._features_of([self._rows[d] for _, d, _ in kept]))
        return IndexResult(feats, [p for p, _, _ in kept], skipped, encoded,
                           [d for _, d, _ in kept], [s for _, _, s in kept])


def embed_image_files(model: torch.nn.Module, paths: Sequence[PathLike], *, cache_dir: PathLike,
                      batch_size: int = 64, progress: bool = True
                      ) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """One-call form of :class:`ImageIndex`: ``(features, kept_paths, skipped)``."""
    result = ImageIndex(model, cache_dir, batch_size=batch_size, progress=progress).embed(paths)
    return result.features, result.paths, result.skipped
