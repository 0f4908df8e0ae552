"""An index folder: image features in checksummed, memory-mapped segments and one atomic manifest.

Layout of ``INDEX/``::

    manifest.json         what the folder holds; replaced atomically, the folder's one source of truth
    segments/000000.npy   (rows, dim) float32 or float16, L2-normalised; written once, never changed
    entries/entries-<sha256[:16]>.npz   the gallery: one entry per file, as columns, in one or more
                          tables (search/entries.py): an update appends one
    .lock                 held (flock) by the one process that writes the folder

``manifest.json`` records the model that made the features (its key, name and source), the
feature dimension and dtype, every segment with its row count and SHA-256, and the entry
tables' files, counts and SHA-256s. Each entry is ``path, segment, row, sha1, size, mtime_ns``;
files with the same content share a row; a changed file gets a new one. The manifest stays a
few kilobytes at any gallery size. Version 3 lists the entry tables an index's updates appended
(each update writes only what changed; past ``MAX_ENTRY_TABLES`` tables, or when asked, they are
compacted into one); version 2 had one table, version 1 the entries as JSON lists in the
manifest: both still open, and the next update writes version 3. Segments are plain ``.npy``
arrays, opened with ``allow_pickle=False``: opening an index does not read its features into
RAM, and searching reads their rows with positional reads (search/rows.py), not through a
memory map, so the rows it touches leave no file pages in the process. Opening checks every segment's size, header and SHA-256, the entry
table's SHA-256 and columns, and every entry's row.

An update appends segments, appends an entry table and then renames a new manifest into
place: a crash leaves the old manifest (and, at worst, files no manifest lists, removed by the
next writer).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from upperson.io import atomic_path, atomic_write_json, file_digest
from upperson.search.entries import ENTRIES_DIR, Entry, EntryTable, EntryTableError, entry_delta, keyed, merged
from upperson.search.rows import DTYPES, IndexFolderError, SegmentFile

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
FORMAT = "upperson-index"
FORMAT_VERSION = 3
#: versions this code opens: 1 kept the entries in the manifest as JSON, 2 in one table
READ_VERSIONS = (1, 2, 3)
#: entry tables an index may list before an update compacts them into one
MAX_ENTRY_TABLES = 16
MANIFEST = "manifest.json"
#: rows an exact scan reads at once (:meth:`IndexStore.chunks`): 32 MB of float32 at 512-d
CHUNK_ROWS = 1 << 14
SEGMENTS = "segments"
ANN_DIR = "ann"
LOCK = ".lock"
#: entry fields, in the order the manifest stores them
ENTRY_FIELDS = ("path", "segment", "row", "sha1", "size", "mtime_ns")


@dataclass
class Manifest:
    """The contents of ``manifest.json``."""

    model: dict[str, Any]
    dim: int
    dtype: str
    segments: list[dict[str, Any]] = field(default_factory=list)  # {"name", "rows", "sha256"}
    entries: Sequence[Entry] = field(default_factory=list)  # a list, or an EntryTable as read from disk
    skipped: list[list[str]] = field(default_factory=list)  # [path, reason]
    complete: bool = True
    build: dict[str, Any] = field(default_factory=dict)
    ann: Optional[dict[str, Any]] = None  # the approximate index, when one was built (search/approximate.py)
    #: the records of the entry tables on disk (format 3), once read or written; None: none yet
    entry_tables: Optional[list[dict[str, Any]]] = None
    #: the gallery those tables give (keyed), against which the next write appends its changes
    base: Optional[EntryTable] = None

    def to_json(self, entry_tables: list[dict[str, Any]]) -> dict[str, Any]:
        """The manifest's JSON, with ``entry_tables`` the records of the entries' table files."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "model": self.model, "dim": self.dim,
                "dtype": self.dtype, "complete": self.complete, "segments": self.segments,
                "entry_fields": list(ENTRY_FIELDS), "entry_tables": entry_tables,
                "skipped": self.skipped, "build": self.build, "ann": self.ann}

    def table(self) -> EntryTable:
        """The entries as an :class:`EntryTable` (no copy when they already are one)."""
        return self.entries if isinstance(self.entries, EntryTable) else EntryTable.from_entries(self.entries)


def read_manifest(folder: Path) -> Manifest:
    """``folder/manifest.json``, with every field checked for type and range."""
    path = folder / MANIFEST
    if not path.is_file():
        hint = " (it is not an index folder: build one with `python -m upperson index`)" if folder.is_dir() else ""
        raise IndexFolderError(f"no index at {folder}: {MANIFEST} is missing{hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFolderError(f"{path}: not valid JSON ({exc}); the index is corrupted: build it again") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise IndexFolderError(f"{path}: not an UP-Person index (format {raw.get('format') if isinstance(raw, dict) else None!r})")
    if raw.get("version") not in READ_VERSIONS:
        raise IndexFolderError(f"{path}: index format version {raw.get('version')!r}; this code reads "
                               f"{', '.join(map(str, READ_VERSIONS))}: build the index again with this version")
    try:
        records: Optional[list[dict[str, Any]]] = None
        if raw["version"] == 1:
            entries: Sequence[Entry] = [Entry(str(p), int(s), int(r), str(h), int(z), int(m))
                                        for p, s, r, h, z, m in raw["entries"]]
        elif raw["version"] == 2:
            entries = EntryTable.read(folder, dict(raw["entry_table"]))
        else:
            records = [dict(r) for r in raw["entry_tables"]]
            if not records:
                raise ValueError("no entry table")
            entries = merged([EntryTable.read(folder, r, keyed=True) for r in records])
        manifest = Manifest(model=dict(raw["model"]), dim=int(raw["dim"]), dtype=str(raw["dtype"]),
                            segments=[dict(s) for s in raw["segments"]], entries=entries,
                            skipped=[[str(a), str(b)] for a, b in raw.get("skipped", [])],
                            complete=bool(raw.get("complete", True)), build=dict(raw.get("build", {})),
                            ann=dict(raw["ann"]) if raw.get("ann") else None,
                            entry_tables=records, base=entries if records else None)
    except EntryTableError as exc:
        raise IndexFolderError(f"{exc} (listed in {path}); build the index again") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFolderError(f"{path}: a field is missing or of the wrong type ({exc}); build the index again") from exc
    if manifest.dtype not in DTYPES or manifest.dim < 1:
        raise IndexFolderError(f"{path}: dtype {manifest.dtype!r}, dim {manifest.dim}: not an index this code reads")
    for seg in manifest.segments:
        if not (isinstance(seg.get("name"), str) and isinstance(seg.get("rows"), int) and seg["rows"] >= 0
                and isinstance(seg.get("sha256"), str)) or "/" in seg["name"] or seg["name"].startswith("."):
            raise IndexFolderError(f"{path}: segment record {seg!r} is malformed; build the index again")
    table = manifest.table()
    rows = np.array([s["rows"] for s in manifest.segments] + [0], dtype=np.int64)
    bad = (table.segment < 0) | (table.segment >= len(manifest.segments)) | (table.row < 0)
    bad |= table.row >= rows[np.where(bad, len(manifest.segments), table.segment)]
    if bad.any():
        e = table[int(np.argmax(bad))]
        raise IndexFolderError(f"{path}: entry {e.path!r} points at segment {e.segment} row {e.row}, "
                               "which the index does not have; build the index again")
    return manifest


def segment_bytes(rows: int, dim: int, dtype: str) -> int:
    """The size of a ``.npy`` segment as :func:`write_segment` writes it (header included)."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((0, dim), dtype=DTYPES[dtype]))
    header["shape"] = (rows, dim)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)  # the magic string and the padded header
    return len(buf.getvalue()) + rows * dim * np.dtype(DTYPES[dtype]).itemsize


def write_segment(folder: Path, name: Union[int, str], features: np.ndarray) -> dict[str, Any]:
    """Write ``features`` as segment ``name`` (a file name, or a number: ``NNNNNN.npy``) of ``folder``,
    atomically; its manifest record."""
    name = f"{name:06d}.npy" if isinstance(name, int) else name
    path = folder / SEGMENTS / name
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(features), allow_pickle=False, version=(1, 0))
        digest = file_digest(tmp)
    return {"name": name, "rows": int(features.shape[0]), "sha256": digest}


@dataclass
class IndexStore:
    """An opened, verified index folder: its manifest and its segments (memory maps for whole-array
    readers, :class:`SegmentFile` for the rows searching reads)."""

    folder: Path
    manifest: Manifest
    segments: list[np.ndarray]  # memory-mapped, (rows, dim): for whole-array users (the demo's cache)
    #: the same segments open for positional reads (search/rows.py), which searching uses
    files: list[SegmentFile] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.files:
            self.files = [SegmentFile(self.folder / SEGMENTS / s["name"], s["rows"], self.manifest.dim,
                                      self.manifest.dtype) for s in self.manifest.segments]

    @classmethod
    def open(cls, folder: PathLike, *, verify: bool = True) -> "IndexStore":
        """Open ``folder`` read-only, checking each segment's size, header and (``verify``) SHA-256."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        segments = [open_segment(folder, seg, manifest, verify=verify) for seg in manifest.segments]
        return cls(folder, manifest, segments)

    def __len__(self) -> int:
        return len(self.manifest.entries)

    def entry_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(segment, row) of every entry, as two int64 arrays in entry order."""
        table = self.manifest.table()
        return table.segment, table.row

    @property
    def offsets(self) -> np.ndarray:
        """The first global row of each segment, then the total number of rows."""
        return np.cumsum([0] + [s["rows"] for s in self.manifest.segments])

    def flat_rows(self) -> np.ndarray:
        """The global row (segments laid end to end) of every entry, in entry order."""
        segment, row = self.entry_rows()
        return self.offsets[segment] + row

    def rows_at(self, rows: np.ndarray) -> np.ndarray:
        """float32 features of global rows (in the order given, repeats allowed), read with positional
        reads (no memory map: the re-rank's scattered rows leave no pages in this process) and
        checked finite."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        offsets = self.offsets
        if len(rows) and (rows.min() < 0 or rows.max() >= offsets[-1]):
            raise IndexError(f"{self.folder}: rows outside 0..{int(offsets[-1]) - 1}")
        out = np.empty((len(rows), self.manifest.dim), dtype=np.float32)
        which = np.searchsorted(offsets, rows, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.files[int(k)].read_rows(rows[sel] - offsets[k])
        return out

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, float32 features) of every stored row in order, ``rows`` at a time and
        never across a segment's end, read with positional reads and checked finite: an exact scan
        holds one chunk, not the mapped file."""
        for file, start in zip(self.files, self.offsets[:-1]):
            for lo in range(0, len(file), rows):
                yield int(start) + lo, file.read_range(lo, lo + rows)

    def features_of(self, entries: list[int]) -> np.ndarray:
        """float32 features of the given entry numbers (read from the segments)."""
        return self.rows_at(self.flat_rows()[np.asarray(entries, dtype=np.int64)])


def open_segment(folder: Path, record: dict[str, Any], manifest: Manifest, *, verify: bool) -> np.ndarray:
    """One segment, memory-mapped, after its size, header and (``verify``) checksum are checked."""
    path = folder / SEGMENTS / record["name"]
    if not path.is_file():
        raise IndexFolderError(f"{path} is missing (listed in {folder / MANIFEST}); build the index again")
    expected = segment_bytes(record["rows"], manifest.dim, manifest.dtype)
    size = path.stat().st_size
    if size != expected:
        raise IndexFolderError(f"{path} is truncated or corrupted: {size} bytes, {expected} expected for "
                               f"{record['rows']} x {manifest.dim} {manifest.dtype}; build the index again")
    if verify and file_digest(path) != record["sha256"]:
        raise IndexFolderError(f"{path} is corrupted: its sha256 differs from {MANIFEST}'s; build the index again")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise IndexFolderError(f"{path} is not a feature segment ({exc}); build the index again") from exc
    if array.shape != (record["rows"], manifest.dim) or array.dtype != DTYPES[manifest.dtype]:
        raise IndexFolderError(f"{path}: shape {array.shape} {array.dtype}, the manifest says "
                               f"({record['rows']}, {manifest.dim}) {manifest.dtype}; build the index again")
    return array


def write_manifest(folder: Path, manifest: Manifest, *, compact: bool = False) -> None:
    """Write the entries, then rename a new ``manifest.json`` into place (after its segments are on
    disk); entry tables no manifest lists any more are then removed.

    The entries are appended as one table of what changed since ``manifest.base`` (see
    :func:`~upperson.search.entries.entry_delta`); they are written whole (one table) for a new
    index, a version 1 or 2 one, past ``MAX_ENTRY_TABLES`` tables, when most entries changed, or
    with ``compact``.
    """
    table = manifest.table()
    records, base = manifest.entry_tables, manifest.base
    if compact or not records or base is None or len(records) >= MAX_ENTRY_TABLES:
        records = [keyed(table).write(folder)]
    elif table is not base:
        delta = entry_delta(base, table)
        if delta is None:
            records = [keyed(table).write(folder)]
        elif len(delta):
            records = records + [delta.write(folder)]
    atomic_write_json(folder / MANIFEST, manifest.to_json(records))
    manifest.entries, manifest.entry_tables, manifest.base = table, records, table
    listed = {r["name"] for r in records}
    for p in (folder / ENTRIES_DIR).iterdir():
        if p.name not in listed and p.name.startswith("entries-"):
            p.unlink(missing_ok=True)


def remove_unlisted_segments(folder: Path, manifest: Optional[Manifest]) -> int:
    """Delete segment and approximate-index files (and temporary files) that no manifest lists:
    left by an interrupted write."""
    listed = {s["name"] for s in manifest.segments} if manifest else set()
    if manifest and manifest.ann:
        listed.add(manifest.ann["file"])
    if manifest and manifest.entry_tables:
        listed.update(r["name"] for r in manifest.entry_tables)
    removed = 0
    for sub in (SEGMENTS, ANN_DIR, ENTRIES_DIR):
        if (folder / sub).is_dir():
            for p in (folder / sub).iterdir():
                if p.name not in listed:
                    p.unlink(missing_ok=True)
                    removed += 1
    return removed


@contextmanager
def write_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for writing; a second writer is refused at once (released when the process ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise IndexFolderError(f"another process is writing the index {folder}; wait for it to finish, "
                                       "or give another --out") from None
            raise
        yield
    finally:
        os.close(fd)
