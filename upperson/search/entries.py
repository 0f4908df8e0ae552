"""An index's gallery entries as columns: compact in memory and on disk, for galleries of millions.

One entry per gallery file: ``path, segment, row, sha1, size, mtime_ns`` (store.ENTRY_FIELDS).
An :class:`EntryTable` keeps them as numpy columns (the paths as one UTF-8 byte string and end
offsets), about 80 bytes an entry plus its path, instead of one Python object each, and is
written as one uncompressed ``.npz`` of plain arrays: read with ``allow_pickle=False``, its
SHA-256 in the manifest, its name carrying that digest so that a new table never overwrites
the one an older manifest lists.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, overload

import numpy as np

from upperson.io import atomic_path, file_digest

ENTRIES_DIR = "entries"
#: the arrays of a table file, with their dtypes
COLUMNS = {"path_bytes": np.uint8, "path_end": np.int64, "segment": np.int64, "row": np.int64,
           "sha1": np.dtype("S40"), "size": np.int64, "mtime_ns": np.int64}


@dataclass(frozen=True)
class Entry:
    """One gallery file: where its feature is, and what its content was when it was indexed."""

    path: str
    segment: int
    row: int
    sha1: str
    size: int
    mtime_ns: int

    def as_list(self) -> list:
        return [self.path, self.segment, self.row, self.sha1, self.size, self.mtime_ns]


class EntryTableError(ValueError):
    """A table file that is missing, corrupted, or not a table of entries."""


class EntryTable(Sequence):
    """Gallery entries as columns; ``table[i]`` is an :class:`Entry`."""

    def __init__(self, path_bytes: np.ndarray, path_end: np.ndarray, segment: np.ndarray, row: np.ndarray,
                 sha1: np.ndarray, size: np.ndarray, mtime_ns: np.ndarray) -> None:
        self.path_bytes, self.path_end = path_bytes, path_end
        self.segment, self.row, self.sha1, self.size, self.mtime_ns = segment, row, sha1, size, mtime_ns

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> "EntryTable":
        """A table of :class:`Entry` objects (in their order)."""
        entries = list(entries)
        encoded = [e.path.encode("utf-8", "surrogateescape") for e in entries]
        lengths = np.fromiter((len(p) for p in encoded), np.int64, len(encoded))
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), np.cumsum(lengths),
                   np.fromiter((e.segment for e in entries), np.int64, len(entries)),
                   np.fromiter((e.row for e in entries), np.int64, len(entries)),
                   np.array([e.sha1.encode("ascii") for e in entries], dtype="S40").reshape(len(entries)),
                   np.fromiter((e.size for e in entries), np.int64, len(entries)),
                   np.fromiter((e.mtime_ns for e in entries), np.int64, len(entries)))

    @classmethod
    def from_columns(cls, paths: Sequence[str], segment: np.ndarray, row: np.ndarray) -> "EntryTable":
        """A table of files with no recorded content (synthetic galleries): empty sha1, size and mtime 0."""
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        n = len(encoded)
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
                   np.cumsum(np.fromiter((len(p) for p in encoded), np.int64, n)),
                   np.asarray(segment, np.int64), np.asarray(row, np.int64), np.zeros(n, "S40"),
                   np.zeros(n, np.int64), np.zeros(n, np.int64))

    def __len__(self) -> int:
        return len(self.segment)

    def path(self, i: int) -> str:
        """The path of entry ``i`` (without building the whole entry)."""
        lo = int(self.path_end[i - 1]) if i > 0 else 0
        return self.path_bytes[lo:int(self.path_end[i])].tobytes().decode("utf-8", "surrogateescape")

    @overload
    def __getitem__(self, i: int) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"entry {i} of {n}")
        i %= n
        return Entry(self.path(i), int(self.segment[i]), int(self.row[i]), self.sha1[i].decode("ascii"),
                     int(self.size[i]), int(self.mtime_ns[i]))

    def __iter__(self) -> Iterator[Entry]:
        return (self[i] for i in range(len(self)))

    # ------------------------------------------------------------------ files
    def write(self, folder: Path) -> dict[str, Any]:
        """Write the table into ``folder/entries/`` atomically; its manifest record."""
        buf = io.BytesIO()
        np.savez(buf, **{name: getattr(self, name) for name in COLUMNS})
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"entries-{digest[:16]}.npz"
        path = folder / ENTRIES_DIR / name
        if not (path.is_file() and file_digest(path) == digest):
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(data)
        return {"name": name, "entries": len(self), "sha256": digest}

    @classmethod
    def read(cls, folder: Path, record: dict[str, Any]) -> "EntryTable":
        """The table a manifest record names, after its SHA-256, arrays and lengths are checked."""
        name = record.get("name")
        if not isinstance(name, str) or "/" in name or name.startswith(".") or not isinstance(record.get("entries"), int):
            raise EntryTableError(f"entry table record {record!r} is malformed")
        path = folder / ENTRIES_DIR / name
        if not path.is_file():
            raise EntryTableError(f"{path} is missing")
        if file_digest(path) != record.get("sha256"):
            raise EntryTableError(f"{path} is corrupted: its sha256 differs from the manifest's")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in COLUMNS}
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise EntryTableError(f"{path} is not a table of entries ({exc})") from exc
        n = record["entries"]
        for col, dtype in COLUMNS.items():
            a = arrays[col]
            if a.dtype != np.dtype(dtype) or a.ndim != 1 or (col != "path_bytes" and len(a) != n):
                raise EntryTableError(f"{path}: column {col} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} "
                                      f"of {n} entries")
        end = arrays["path_end"]
        if n and (end[-1] != len(arrays["path_bytes"]) or (np.diff(end) < 0).any() or end[0] < 0):
            raise EntryTableError(f"{path}: the path offsets do not match the path bytes")
        return cls(**arrays)

