"""Build or update an index folder from a gallery: a folder tree of images, or a list of files.

Incremental: a file whose path, size and modification time are unchanged keeps its row without
being read; any other file is hashed (SHA-1 of its bytes) and reuses the row of the same
content if the index has one, so only new or changed content is encoded. Files that are gone
leave the gallery (their rows stay in the segments, unused).

Resumable: features are appended as a segment every ``segment_rows`` new images, each followed
by a manifest marked incomplete, so after Ctrl-C (or a kill) the same command continues where
the last segment ended. Bad files (unreadable, not an image, larger than ``max_bytes`` or
``max_pixels``) are skipped, counted and named, never fatal.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm

from upperson.data.transforms import build_transforms
from upperson.evaluation import inference_model
from upperson.index import file_sha1, model_key
from upperson.search.approximate import AnnConfig, build_ann
from upperson.search.store import (DTYPES, Entry, IndexFolderError, IndexStore, Manifest, MANIFEST, read_manifest,
                                   remove_unlisted_segments, write_lock, write_manifest, write_segment)

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class BuildLimits:
    """What one gallery file may be; larger files are skipped and named."""

    max_bytes: int = 50 * 1024 * 1024  # 50 MB
    max_pixels: int = 50_000_000  # 50 MP, checked from the header before decoding

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"file limits must be positive, got {self.max_bytes} bytes, {self.max_pixels} pixels")


@dataclass
class BuildReport:
    """What :func:`build_index` did."""

    folder: Path
    listed: int
    indexed: int
    encoded: int
    reused_unchanged: int
    reused_content: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    ann: Optional[dict[str, Any]] = None  # the approximate index's record, when one was built

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


def list_gallery(gallery: PathLike) -> tuple[list[Path], int]:
    """(image files, other files ignored): a folder tree (sorted, hidden names and folder
    symlinks skipped) or a text file with one path a line (relative to the list's folder)."""
    gallery = Path(gallery).expanduser()
    if gallery.is_file():
        base = gallery.resolve().parent
        lines = gallery.read_text(encoding="utf-8-sig").splitlines()
        files = [(base / line.strip()).absolute() for line in lines if line.strip() and not line.startswith("#")]
        if not files:
            raise ValueError(f"{gallery}: the list names no files (one path a line)")
        return files, 0
    if not gallery.is_dir():
        raise FileNotFoundError(f"gallery {gallery} does not exist: give a folder of images or a list of files")
    files, others = [], 0
    for dirpath, dirnames, filenames in os.walk(gallery.resolve()):  # folder symlinks are not followed
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                files.append(Path(dirpath) / name)
            else:
                others += 1
    if not files:
        raise ValueError(f"{gallery}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"
                         + (f"; {others} other file(s)" if others else ""))
    return files, others


def load_image(path: Path, limits: BuildLimits) -> Image.Image:
    """Decode ``path`` as RGB after checking its pixel count from the header."""
    with Image.open(path) as im:
        w, h = im.size
        if w * h > limits.max_pixels:
            raise ValueError(f"{w} x {h} pixels, over the limit of {limits.max_pixels:,} (--max-pixels)")
        im.load()
        return im.convert("RGB")


def build_index(model: torch.nn.Module, gallery: PathLike, out: PathLike, *, source: str,
                dtype: str = "float32", batch_size: int = 64, segment_rows: int = 4096,
                limits: BuildLimits = BuildLimits(), progress: bool = True,
                approximate: Optional[AnnConfig] = None) -> BuildReport:
    """Index ``gallery`` into folder ``out`` with ``model`` (``source`` names it in the manifest);
    with ``approximate``, then (re)build the IVF-PQ index over it and measure its recall."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose {' or '.join(DTYPES)}")
    if batch_size < 1 or segment_rows < 1:
        raise ValueError(f"batch size {batch_size} and segment rows {segment_rows} must be >= 1")
    out = Path(out)
    start = time.perf_counter()
    files, others = list_gallery(gallery)
    key = model_key(model)
    _check_out(out, key, dtype)
    with write_lock(out):
        old = read_manifest(out) if (out / MANIFEST).exists() else None
        removed = remove_unlisted_segments(out, old)
        if removed:
            log.info("%s: removed %d segment file(s) an interrupted update left", out, removed)
        report = _Builder(model, out, key, source, dtype, old, batch_size, segment_rows, limits, progress,
                          gallery, others).run(files, start)
        if approximate is not None:
            store = IndexStore.open(out)
            store.manifest.ann = build_ann(store, approximate)
            write_manifest(out, store.manifest)
            remove_unlisted_segments(out, store.manifest)  # an older approximate index
            report.ann = store.manifest.ann
        return report


def _check_out(out: Path, key: str, dtype: str) -> None:
    """Refuse, before anything is written, an ``out`` that is another kind of folder or another model's index."""
    if out.exists() and not out.is_dir():
        raise IndexFolderError(f"--out {out} is a file; give a folder")
    if out.is_dir() and not (out / MANIFEST).exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise IndexFolderError(f"--out {out} is a folder that is not an index (no {MANIFEST}); give a new or empty folder")
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest.model.get("key") != key:
            raise IndexFolderError(
                f"{out} was built by another model ({manifest.model.get('source')}, key {manifest.model.get('key')}); "
                f"this one has key {key}: give that model, or another --out")
        if manifest.dtype != dtype:
            raise IndexFolderError(f"{out} stores {manifest.dtype} features; pass --dtype {manifest.dtype} "
                                   "(or build a new index)")


class _Builder:
    """One build: the old manifest's rows, the new entries, the pending features."""

    def __init__(self, model, out: Path, key: str, source: str, dtype: str, old: Optional[Manifest],
                 batch_size: int, segment_rows: int, limits: BuildLimits, progress: bool,
                 gallery: PathLike, others: int) -> None:
        self.model, self.out, self.dtype, self.limits = model, out, dtype, limits
        self.batch_size, self.segment_rows, self.progress = batch_size, segment_rows, progress
        dim = old.dim if old else None
        self.manifest = Manifest(
            model={"key": key, "source": source, "name": model.config.name, "image_size": list(model.image_size)},
            dim=dim or 0, dtype=dtype, segments=list(old.segments) if old else [], ann=old.ann if old else None)
        self.by_path = {e.path: e for e in old.entries} if old else {}
        self.by_content = {e.sha1: (e.segment, e.row) for e in old.entries} if old else {}
        self.gallery, self.others = gallery, others
        self.stats: dict[int, os.stat_result] = {}  # position -> stat, of the files waiting for a row

    def run(self, files: Sequence[Path], start: float) -> BuildReport:
        entries: dict[int, Entry] = {}
        skipped: list[tuple[str, str]] = []
        todo: list[tuple[int, Path, str]] = []  # (position, file, sha1) of each new content
        pending_content: dict[str, list[int]] = {}  # sha1 -> positions waiting for its row
        unchanged = by_content = 0
        for i, path in enumerate(tqdm(files, desc="checking files", unit="file", disable=not self.progress,
                                      leave=False)):
            try:
                st = path.stat()
            except OSError as exc:
                skipped.append((str(path), f"cannot read ({exc.strerror or exc})"))
                continue
            if st.st_size > self.limits.max_bytes:
                skipped.append((str(path), f"{st.st_size:,} bytes, over the limit of {self.limits.max_bytes:,} (--max-bytes)"))
                continue
            prev = self.by_path.get(str(path))
            if prev is not None and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
                entries[i] = prev
                unchanged += 1
                continue
            try:
                digest = file_sha1(path)
            except OSError as exc:
                skipped.append((str(path), f"cannot read ({exc.strerror or exc})"))
                continue
            if digest in self.by_content:
                seg, row = self.by_content[digest]
                entries[i] = Entry(str(path), seg, row, digest, st.st_size, st.st_mtime_ns)
                by_content += 1
            else:
                self.stats[i] = st
                if digest in pending_content:
                    pending_content[digest].append(i)
                else:
                    pending_content[digest] = [i]
                    todo.append((i, path, digest))
        encoded = self._encode_all(todo, pending_content, entries, skipped, files)
        self._flush_manifest(entries, skipped, files, complete=True, start=start, encoded=encoded)
        if skipped:
            names = ", ".join(f"{Path(p).name} ({why})" for p, why in skipped[:10])
            more = f" and {len(skipped) - 10} more (listed in {self.out / MANIFEST})" if len(skipped) > 10 else ""
            log.warning("skipped %d of %d file(s): %s%s", len(skipped), len(files), names, more)
        return BuildReport(self.out, len(files), len(entries), encoded, unchanged, by_content, skipped,
                           time.perf_counter() - start)

    def _encode_all(self, todo, pending_content, entries, skipped, files) -> int:
        """Encode the new contents, appending a segment (and an incomplete manifest) every ``segment_rows``."""
        if not todo:
            return 0
        transform = build_transforms(self.model.image_size, train=False)
        encoder = inference_model(self.model)  # LoRA and prefix folded: the same features, faster
        rows: list[np.ndarray] = []
        waiting: list[str] = []  # the sha1 of each row in ``rows``
        encoded = 0
        bar = tqdm(total=len(todo), desc="indexing images", unit="img", disable=not self.progress)
        try:
            for batch in _batches(todo, self.batch_size):
                pixels, kept = [], []
                for i, path, digest in batch:
                    try:
                        pixels.append(transform(load_image(path, self.limits)))
                        kept.append(digest)
                    except Exception as exc:  # any decoder error: this file is skipped, named
                        reason = str(exc) if isinstance(exc, ValueError) and "limit" in str(exc) else \
                            f"not a readable image ({type(exc).__name__}: {exc})"
                        for j in pending_content.pop(digest, [i]):
                            skipped.append((str(files[j]), reason))
                if pixels:
                    with torch.no_grad():
                        feats = F.normalize(encoder.encode_image(torch.stack(pixels)).float(), dim=-1)
                    rows.append(feats.numpy().astype(DTYPES[self.dtype]))
                    waiting.extend(kept)
                    encoded += len(kept)
                bar.update(len(batch))
                if sum(len(r) for r in rows) >= self.segment_rows:
                    self._flush_segment(rows, waiting, pending_content, entries, files)
                    self._flush_manifest(entries, skipped, files, complete=False)
                    rows, waiting = [], []
        finally:  # also on Ctrl-C: keep what was encoded, so that the next run continues from it
            bar.close()
            if rows:
                self._flush_segment(rows, waiting, pending_content, entries, files)
                self._flush_manifest(entries, skipped, files, complete=False)
        return encoded

    def _flush_segment(self, rows, waiting, pending_content, entries, files) -> None:
        features = np.concatenate(rows)
        if not self.manifest.dim:
            self.manifest.dim = int(features.shape[1])
        number = len(self.manifest.segments)
        if self.manifest.ann is not None:
            log.warning("%s: the approximate index no longer covers every row; it is dropped (pass --approximate "
                        "to build it again)", self.out)
            self.manifest.ann = None
        self.manifest.segments.append(write_segment(self.out, number, features))
        for row, digest in enumerate(waiting):
            self.by_content[digest] = (number, row)
            for j in pending_content.pop(digest, []):
                st = self.stats[j]
                entries[j] = Entry(str(files[j]), number, row, digest, st.st_size, st.st_mtime_ns)

    def _flush_manifest(self, entries: dict[int, Entry], skipped, files, *, complete: bool,
                        start: Optional[float] = None, encoded: int = 0) -> None:
        self.manifest.entries = [entries[i] for i in sorted(entries)]
        self.manifest.skipped = [[p, why] for p, why in skipped]
        self.manifest.complete = complete
        build: dict[str, Any] = {"gallery": str(Path(self.gallery).expanduser().resolve()), "files": len(files),
                                 "other_files_ignored": self.others, "max_bytes": self.limits.max_bytes,
                                 "max_pixels": self.limits.max_pixels, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if start is not None:
            build |= {"encoded": encoded, "seconds": round(time.perf_counter() - start, 2)}
        self.manifest.build = build
        if not self.manifest.dim:
            self.manifest.dim = _feature_dim(self.model)
        write_manifest(self.out, self.manifest)


def _feature_dim(model) -> int:
    """The model's feature width (for an index whose every file was skipped)."""
    h, w = model.image_size
    with torch.no_grad():
        return int(inference_model(model).encode_image(torch.zeros(1, 3, h, w)).shape[1])


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for lo in range(0, len(items), size):
        yield items[lo:lo + size]
