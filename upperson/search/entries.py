"""An index's gallery entries as columns: compact in memory and on disk, for galleries of millions.

One entry per gallery file: ``path, segment, row, sha1, size, mtime_ns`` (store.ENTRY_FIELDS).
An :class:`EntryTable` keeps them as numpy columns (the paths as one UTF-8 byte string and end
offsets), about 90 bytes an entry plus its path, instead of one Python object each, and is
written as one uncompressed ``.npz`` of plain arrays: read with ``allow_pickle=False``, its
SHA-256 in the manifest, its name carrying that digest so that a new table never overwrites
the one an older manifest lists.

Appending (format 3): every entry has an ``order`` key (int64, > 0), and an index lists several
tables. The gallery is their union by key, in key order: a later table's entry replaces an
earlier one with the same key, and one with ``segment == -1`` removes it (a tombstone). An update
therefore writes only its new, changed and removed entries (:func:`entry_delta`); a new file gets
a key between its neighbours' (a full write spaces keys ``ORDER_GAP`` apart), so the gallery keeps
the order a fresh build gives it.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence, overload

import numpy as np

from upperson.io import atomic_path, file_digest

ENTRIES_DIR = "entries"
#: the arrays of a table file, with their dtypes
COLUMNS = {"path_bytes": np.uint8, "path_end": np.int64, "segment": np.int64, "row": np.int64,
           "sha1": np.dtype("S40"), "size": np.int64, "mtime_ns": np.int64}
#: the key column of a format-3 table (format 2 tables have none: their order is their row order)
ORDER = "order"
#: keys of a fully written table are ORDER_GAP apart, leaving room for files inserted between them
ORDER_GAP = 1 << 20
#: the segment of a tombstone: the entry with its key is removed
REMOVED = -1


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
                 sha1: np.ndarray, size: np.ndarray, mtime_ns: np.ndarray, order: Optional[np.ndarray] = None) -> None:
        self.path_bytes, self.path_end = path_bytes, path_end
        self.segment, self.row, self.sha1, self.size, self.mtime_ns = segment, row, sha1, size, mtime_ns
        self.order = order  # the entries' keys, once the table is on disk (format 3); None before

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

    def paths(self) -> list[str]:
        """Every entry's path, in order (one pass over the path bytes)."""
        data = self.path_bytes.tobytes()
        ends = self.path_end.tolist()
        return [data[lo:hi].decode("utf-8", "surrogateescape") for lo, hi in zip([0] + ends[:-1], ends)]

    def take(self, rows: np.ndarray) -> "EntryTable":
        """A new table of entries ``rows`` (in that order), keys included."""
        rows = np.asarray(rows, dtype=np.int64)
        end = self.path_end
        start = np.concatenate([[0], end[:-1]]).astype(np.int64) if len(end) else end
        lengths = (end - start)[rows]
        new_end = np.cumsum(lengths)
        gather = np.repeat(start[rows] - (new_end - lengths), lengths) + np.arange(int(new_end[-1]) if len(rows) else 0)
        return EntryTable(self.path_bytes[gather], new_end.astype(np.int64), self.segment[rows], self.row[rows],
                          self.sha1[rows], self.size[rows], self.mtime_ns[rows],
                          None if self.order is None else self.order[rows])

    @classmethod
    def concat(cls, tables: Sequence["EntryTable"]) -> "EntryTable":
        """The entries of ``tables`` end to end (keys included when every table has them)."""
        if len(tables) == 1:
            return tables[0]
        ends, base = [], 0
        for t in tables:
            ends.append(t.path_end + base)
            base += len(t.path_bytes)
        keyed = all(t.order is not None for t in tables)
        return cls(np.concatenate([t.path_bytes for t in tables]), np.concatenate(ends).astype(np.int64),
                   *(np.concatenate([getattr(t, c) for t in tables]) for c in ("segment", "row", "sha1", "size",
                                                                               "mtime_ns")),
                   np.concatenate([t.order for t in tables]) if keyed else None)

    # ------------------------------------------------------------------ files
    def write(self, folder: Path) -> dict[str, Any]:
        """Write the table into ``folder/entries/`` atomically; its manifest record."""
        buf = io.BytesIO()
        columns = {name: getattr(self, name) for name in COLUMNS}
        if self.order is not None:
            columns[ORDER] = self.order
        np.savez(buf, **columns)
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
    def read(cls, folder: Path, record: dict[str, Any], *, keyed: bool = False) -> "EntryTable":
        """The table a manifest record names, after its SHA-256, arrays and lengths are checked;
        ``keyed``: a format-3 table, whose ``order`` column is read and checked too."""
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
                arrays = {name: npz[name] for name in (*COLUMNS, *((ORDER,) if keyed else ()))}
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise EntryTableError(f"{path} is not a table of entries ({exc})") from exc
        n = record["entries"]
        for col, dtype in (COLUMNS | ({ORDER: np.int64} if keyed else {})).items():
            a = arrays[col]
            if a.dtype != np.dtype(dtype) or a.ndim != 1 or (col != "path_bytes" and len(a) != n):
                raise EntryTableError(f"{path}: column {col} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} "
                                      f"of {n} entries")
        end = arrays["path_end"]
        if n and (end[-1] != len(arrays["path_bytes"]) or (np.diff(end) < 0).any() or end[0] < 0):
            raise EntryTableError(f"{path}: the path offsets do not match the path bytes")
        if keyed and n and ((arrays[ORDER] < 1).any() or len(np.unique(arrays[ORDER])) != n):
            raise EntryTableError(f"{path}: its order keys are not distinct positive numbers")
        return cls(**arrays)


def merged(tables: Sequence[EntryTable]) -> EntryTable:
    """The gallery that format-3 ``tables`` (in the manifest's order) give: by key, the last table's
    entry wins, tombstones removed, in key order."""
    if len(tables) == 1 and (tables[0].segment != REMOVED).all() and (np.diff(tables[0].order) > 0).all():
        return tables[0]  # one table, as a full write leaves it: nothing to merge
    table = EntryTable.concat(tables)
    assert table.order is not None
    n = len(table)
    keys, last = np.unique(table.order[::-1], return_index=True)  # sorted keys; each one's last record
    rows = (n - 1 - last)[table.segment[n - 1 - last] != REMOVED]
    return table.take(rows)


def keyed(table: EntryTable) -> EntryTable:
    """``table`` with keys for a full write: ORDER_GAP, 2 * ORDER_GAP, ... in its order."""
    table.order = (np.arange(len(table), dtype=np.int64) + 1) * ORDER_GAP
    return table


def entry_delta(base: EntryTable, new: EntryTable, *, max_fraction: float = 0.5) -> Optional[EntryTable]:
    """The table to append to ``base`` (keyed, as on disk) so that the gallery becomes ``new``:
    its new, changed and removed (tombstone) entries. ``new`` gets its keys. None when appending
    does not pay or cannot keep the order: more than ``max_fraction`` of ``new`` changed, the
    files kept changed order, or no key is left between two neighbours (then write ``new`` whole)."""
    assert base.order is not None
    position = {p: i for i, p in enumerate(base.paths())}
    old = np.fromiter((position.get(p, -1) for p in new.paths()), np.int64, len(new))
    kept = np.flatnonzero(old >= 0)
    keys = np.zeros(len(new), dtype=np.int64)
    keys[kept] = base.order[old[kept]]
    if (np.diff(keys[kept]) <= 0).any():
        return None  # the files kept are in another order: a full write
    added = np.flatnonzero(old < 0)
    if len(added):
        after = np.searchsorted(kept, added)  # the kept entry that follows each added one (len(kept): none)
        prev = np.where(after > 0, keys[kept[np.maximum(after - 1, 0)]] if len(kept) else 0, 0)
        first = np.where(after > 0, kept[np.maximum(after - 1, 0)] + 1 if len(kept) else 0, 0)
        stop = kept[np.minimum(after, len(kept) - 1)] if len(kept) else np.full(len(added), len(new))
        stop = np.where(after < len(kept), stop, len(new))
        run = stop - first
        nxt = np.where(after < len(kept), keys[stop.clip(max=len(new) - 1)], prev + (run + 1) * ORDER_GAP)
        step = (nxt - prev) // (run + 1)
        if (step < 1).any():
            return None  # no room between two neighbours: a full write spaces the keys again
        keys[added] = prev + step * (added - first + 1)
    same = np.ones(len(kept), dtype=bool)
    for col in ("segment", "row", "sha1", "size", "mtime_ns"):
        same &= getattr(new, col)[kept] == getattr(base, col)[old[kept]]
    removed = np.setdiff1d(np.arange(len(base)), old[kept], assume_unique=True)
    removed = removed[~np.isin(base.order[removed], keys[added])]  # a new entry that took its key replaces it
    changes = np.sort(np.concatenate([added, kept[~same]]))
    if len(changes) + len(removed) > max_fraction * max(len(new), 1):
        return None
    new.order = keys
    delta = new.take(changes)
    if len(removed):
        gone = base.take(removed)
        gone.segment = np.full(len(removed), REMOVED, dtype=np.int64)
        delta = EntryTable.concat([delta, gone])
    return delta

