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
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from upperson.data.transforms import build_transforms
from upperson.evaluation import encode_images, inference_model
from upperson.index import file_sha1, model_key
from upperson.search.approximate import AnnConfig, build_ann
from upperson.search.entries import ENTRIES_DIR
from upperson.search import shards
from upperson.search.shards import SHARDS, Shard
from upperson.search.store import (DTYPES, SEGMENTS, Entry, IndexFolderError, IndexStore, Manifest, MANIFEST, open_segment,
                                   read_manifest, remove_unlisted_segments, write_lock, write_manifest, write_segment)

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
        folder = Path(dirpath)  # once per folder: making a Path is most of a listing's time
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                files.append(folder / name)
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
                approximate: Optional[AnnConfig] = None, shard: Optional[Shard] = None,
                compact: bool = False) -> BuildReport:
    """Index ``gallery`` into folder ``out`` with ``model`` (``source`` names it in the manifest);
    with ``approximate``, then (re)build the IVF-PQ index over it and measure its recall. An update
    appends its entries as one more table; ``compact`` writes them as one (store.write_manifest).

    With ``shard`` (one process of a ``torchrun`` job), this process encodes every
    ``shard.count``-th file; rank 0 holds the folder's lock, merges the ranks' segments and
    writes the one manifest (:mod:`upperson.search.shards`).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose {' or '.join(DTYPES)}")
    if batch_size < 1 or segment_rows < 1:
        raise ValueError(f"batch size {batch_size} and segment rows {segment_rows} must be >= 1")
    out = Path(out)
    start = time.perf_counter()
    shard = shard or Shard()
    files, others = list_gallery(gallery) if shard.count == 1 else shared_listing(shard, gallery)
    key = model_key(model)
    settings: dict[str, Any] = dict(model=model, out=out, key=key, source=source, dtype=dtype, batch_size=batch_size,
                    segment_rows=segment_rows, limits=limits, progress=progress and shard.rank == 0,
                    gallery=gallery, others=others, compact=compact)
    if shard.count == 1:
        check_out(out, key, dtype)
        with write_lock(out):
            old = _open_previous(out, model, key, source, dtype)
            builder = _Builder(old=old, **settings)
            part = builder.run(files, range(len(files)))
            report = builder.finish(files, [part], start)
            _maybe_approximate(out, report, approximate)
            return report
    return _build_sharded(shard, files, start, settings, approximate)


def shared_listing(shard: Shard, gallery: PathLike) -> tuple[list[Path], int]:
    """Rank 0's listing of the gallery, on every rank: files added while the ranks start must not
    give two ranks different file positions."""
    shards.check_distributed()
    listing, problem = None, None
    if shard.rank == 0:
        try:
            listing = list_gallery(gallery)
        except (OSError, ValueError) as exc:
            problem = (type(exc).__name__, str(exc))
    listing, problem = shard.broadcast((listing, problem))
    if problem:
        raise (FileNotFoundError if problem[0] == "FileNotFoundError" else ValueError)(problem[1])
    return listing


def _open_previous(out: Path, model, key: str, source: str, dtype: str) -> Optional[Manifest]:
    """The index's manifest (None for a new one), with an interrupted sharded run's work taken in and
    files no manifest lists removed. The caller holds the lock."""
    old = read_manifest(out) if (out / MANIFEST).exists() else None
    if (out / SHARDS).is_dir():
        template = Manifest(model={"key": key, "source": source, "name": model.config.name,
                                   "image_size": list(model.image_size)}, dim=0, dtype=dtype)
        old = shards.absorb_leftovers(out, old, template)
        if old is not None and not old.dim and old.segments:  # the width of the leftover segments
            old.dim = int(np.load(out / SEGMENTS / old.segments[0]["name"], mmap_mode="r", allow_pickle=False).shape[1])
        if old is not None:
            write_manifest(out, old)
        shards.remove_progress(out)
    removed = remove_unlisted_segments(out, old)
    if removed:
        log.info("%s: removed %d segment file(s) an interrupted update left", out, removed)
    return old


def _build_sharded(shard: Shard, files: Sequence[Path], start: float, settings: dict[str, Any],
                   approximate: Optional[AnnConfig]) -> BuildReport:
    """One rank's part of a sharded build (see :mod:`upperson.search.shards`)."""
    shards.check_distributed()
    out: Path = settings["out"]
    with ExitStack() as stack:
        problem, old = None, None
        if shard.rank == 0:
            try:
                check_out(out, settings["key"], settings["dtype"])
                stack.enter_context(write_lock(out))
                old = _open_previous(out, settings["model"], settings["key"], settings["source"], settings["dtype"])
            except IndexFolderError as exc:
                problem = str(exc)
        problem = shard.broadcast(problem)
        if problem:
            raise IndexFolderError(problem)
        if shard.rank != 0 and (out / MANIFEST).exists():
            old = read_manifest(out)
        builder = _Builder(old=old, segment_prefix=f"r{shard.rank}-", **settings)
        builder.save_progress = lambda part, complete: shards.save_progress(
            out, shard.rank, part.segments, part.entries, builder.first_new)
        part = builder.run(files, range(shard.rank, len(files), shard.count))
        parts = shard.gather(part)
        report = None
        if shard.rank == 0:
            assert parts is not None
            builder.manifest.segments = list(old.segments) if old else []
            merged = []
            for p in parts:  # each rank numbered its new segments from first_new on
                shift = len(builder.manifest.segments) - builder.first_new
                builder.manifest.segments.extend(p.segments)
                entries = {i: (replace(e, segment=e.segment + shift) if e.segment >= builder.first_new else e)
                           for i, e in p.entries.items()}
                merged.append(replace(p, entries=entries))
            report = builder.finish(files, merged, start)
            shards.remove_progress(out)
            _maybe_approximate(out, report, approximate)
        shard.barrier()
    if report is None:
        report = BuildReport(out, len(files), len(part.entries), part.encoded, part.unchanged, part.by_content,
                             [(p, why) for _, p, why in part.skipped], time.perf_counter() - start)
    return report


def _maybe_approximate(out: Path, report: BuildReport, approximate: Optional[AnnConfig]) -> None:
    """Build the approximate index over the finished index, when asked for (the caller holds the lock)."""
    if approximate is None:
        return
    store = IndexStore.open(out)
    store.manifest.ann = build_ann(store, approximate)
    write_manifest(out, store.manifest)
    remove_unlisted_segments(out, store.manifest)  # an older approximate index
    report.ann = store.manifest.ann


def check_out(out: Path, key: str, dtype: str) -> None:
    """Refuse, before anything is written, an ``out`` that is another kind of folder or another model's index."""
    if out.exists() and not out.is_dir():
        raise IndexFolderError(f"--out {out} is a file; give a folder")
    if out.is_dir() and not (out / MANIFEST).exists() and any(p.name not in (".lock", SHARDS, SEGMENTS, ENTRIES_DIR) for p in out.iterdir()):
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
        for record in manifest.segments:  # sizes and headers (not checksums: an update reads no features)
            open_segment(out, record, manifest, verify=False)


@dataclass
class Part:
    """What one process found and encoded: entries by file position, its new segments, its skipped files."""

    entries: dict[int, Entry]
    segments: list[dict[str, Any]]  # the records of the segments this process wrote
    skipped: list[tuple[int, str, str]]  # (position, file, reason)
    encoded: int = 0
    unchanged: int = 0
    by_content: int = 0


class _Builder:
    """One process's build: the old manifest's rows, its files' entries, the pending features."""

    def __init__(self, *, model, out: Path, key: str, source: str, dtype: str, old: Optional[Manifest],
                 batch_size: int, segment_rows: int, limits: BuildLimits, progress: bool,
                 gallery: PathLike, others: int, segment_prefix: str = "", compact: bool = False,
                 save_progress: Optional[Callable[[Part, bool], None]] = None) -> None:
        self.model, self.out, self.dtype, self.limits = model, out, dtype, limits
        self.batch_size, self.segment_rows, self.progress = batch_size, segment_rows, progress
        self.manifest = Manifest(
            model={"key": key, "source": source, "name": model.config.name, "image_size": list(model.image_size)},
            dim=old.dim if old else 0, dtype=dtype, segments=list(old.segments) if old else [],
            ann=old.ann if old else None, entry_tables=old.entry_tables if old else None,
            base=old.base if old else None)  # an update appends its entries to the old ones
        self.first_new = len(self.manifest.segments)
        previous = list(old.entries) if old else []  # one pass: making the Entry objects is the cost
        self.by_path = {e.path: e for e in previous}
        self.by_content = {e.sha1: (e.segment, e.row) for e in previous}
        self.gallery, self.others, self.compact = gallery, others, compact
        self.segment_prefix = segment_prefix
        self.save_progress = save_progress or self._save_manifest_progress
        self.stats: dict[int, os.stat_result] = {}  # position -> stat, of the files waiting for a row
        self.files: Sequence[Path] = ()

    def run(self, files: Sequence[Path], positions: Sequence[int]) -> Part:
        """Check, and encode where needed, the files at ``positions``."""
        self.files = files
        part = Part({}, [], [])
        todo: list[tuple[int, Path, str]] = []  # (position, file, sha1) of each new content
        pending: dict[str, list[int]] = {}  # sha1 -> positions waiting for its row
        for i in tqdm(positions, desc="checking files", unit="file", disable=not self.progress, leave=False):
            path = files[i]
            name = str(path)  # once: the listing's Paths are turned into text for each call otherwise
            try:
                st = os.stat(name)
            except OSError as exc:
                part.skipped.append((i, name, f"cannot read ({exc.strerror or exc})"))
                continue
            if st.st_size > self.limits.max_bytes:
                part.skipped.append((i, name, f"{st.st_size:,} bytes, over the limit of "
                                              f"{self.limits.max_bytes:,} (--max-bytes)"))
                continue
            prev = self.by_path.get(name)
            if prev is not None and prev.size == st.st_size and prev.mtime_ns == st.st_mtime_ns:
                part.entries[i] = prev
                part.unchanged += 1
                continue
            try:
                digest = file_sha1(name)
            except OSError as exc:
                part.skipped.append((i, name, f"cannot read ({exc.strerror or exc})"))
                continue
            if digest in self.by_content:
                seg, row = self.by_content[digest]
                part.entries[i] = Entry(name, seg, row, digest, st.st_size, st.st_mtime_ns)
                part.by_content += 1
            else:
                self.stats[i] = st
                if digest in pending:
                    pending[digest].append(i)
                else:
                    pending[digest] = [i]
                    todo.append((i, path, digest))
        self._encode_all(todo, pending, part)
        return part

    def _encode_all(self, todo, pending, part: Part) -> None:
        """Encode the new contents, appending a segment (and saving progress) every ``segment_rows``."""
        if not todo:
            return
        transform = build_transforms(self.model.image_size, train=False)
        encoder = inference_model(self.model)  # LoRA and prefix folded: the same features, faster
        rows: list[np.ndarray] = []
        waiting: list[str] = []  # the sha1 of each row in ``rows``
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
                        for j in pending.pop(digest, [i]):
                            part.skipped.append((j, str(self.files[j]), reason))
                if pixels:
                    with torch.no_grad():  # the evaluation's encoding step (normalised, its precision)
                        feats = encode_images(encoder, torch.stack(pixels))
                    rows.append(feats.numpy().astype(DTYPES[self.dtype]))
                    waiting.extend(kept)
                    part.encoded += len(kept)
                bar.update(len(batch))
                if sum(len(r) for r in rows) >= self.segment_rows:
                    self._flush_segment(rows, waiting, pending, part)
                    self.save_progress(part, False)
                    rows, waiting = [], []
        finally:  # also on Ctrl-C: keep what was encoded, so that the next run continues from it
            bar.close()
            if rows:
                self._flush_segment(rows, waiting, pending, part)
                self.save_progress(part, False)

    def _flush_segment(self, rows, waiting, pending, part: Part) -> None:
        features = np.concatenate(rows)
        if not self.manifest.dim:
            self.manifest.dim = int(features.shape[1])
        number = len(self.manifest.segments)
        if self.manifest.ann is not None:
            log.warning("%s: the approximate index no longer covers every row; it is dropped (pass --approximate "
                        "to build it again)", self.out)
            self.manifest.ann = None
        record = write_segment(self.out, f"{self.segment_prefix}{number:06d}.npy", features)
        self.manifest.segments.append(record)
        part.segments.append(record)
        for row, digest in enumerate(waiting):
            self.by_content[digest] = (number, row)
            for j in pending.pop(digest, []):
                st = self.stats[j]
                part.entries[j] = Entry(str(self.files[j]), number, row, digest, st.st_size, st.st_mtime_ns)

    def _save_manifest_progress(self, part: Part, complete: bool) -> None:
        self.write(part.entries, part.skipped, complete=complete)

    def write(self, entries: dict[int, Entry], skipped: Sequence[tuple[int, str, str]], *, complete: bool,
              start: Optional[float] = None, encoded: int = 0) -> None:
        """Rename a manifest with these entries (in file order) into place."""
        self.manifest.entries = [entries[i] for i in sorted(entries)]
        self.manifest.skipped = [[p, why] for _, p, why in sorted(skipped)]
        self.manifest.complete = complete
        build: dict[str, Any] = {"gallery": str(Path(self.gallery).expanduser().resolve()), "files": len(self.files),
                                 "other_files_ignored": self.others, "max_bytes": self.limits.max_bytes,
                                 "max_pixels": self.limits.max_pixels, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if start is not None:
            build |= {"encoded": encoded, "seconds": round(time.perf_counter() - start, 2)}
        self.manifest.build = build
        if not self.manifest.dim:
            self.manifest.dim = _feature_dim(self.model)
        write_manifest(self.out, self.manifest, compact=self.compact and complete)

    def finish(self, files: Sequence[Path], parts: Sequence[Part], start: float) -> BuildReport:
        """Write the complete manifest from every process's part; the report."""
        self.files = files
        entries: dict[int, Entry] = {}
        skipped: list[tuple[int, str, str]] = []
        for part in parts:
            entries.update(part.entries)
            skipped.extend(part.skipped)
        encoded = sum(p.encoded for p in parts)
        self.write(entries, skipped, complete=True, start=start, encoded=encoded)
        skipped.sort()
        if skipped:
            names = ", ".join(f"{Path(p).name} ({why})" for _, p, why in skipped[:10])
            more = f" and {len(skipped) - 10} more (listed in {self.out / MANIFEST})" if len(skipped) > 10 else ""
            log.warning("skipped %d of %d file(s): %s%s", len(skipped), len(files), names, more)
        return BuildReport(self.out, len(files), len(entries), encoded, sum(p.unchanged for p in parts),
                           sum(p.by_content for p in parts), [(p, why) for _, p, why in skipped],
                           time.perf_counter() - start)


def _feature_dim(model) -> int:
    """The model's feature width (for an index whose every file was skipped)."""
    h, w = model.image_size
    with torch.no_grad():
        return int(inference_model(model).encode_image(torch.zeros(1, 3, h, w)).shape[1])


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for lo in range(0, len(items), size):
        yield items[lo:lo + size]
