"""Reading rows of one feature segment with positional reads, not a memory map.

A segment is a plain ``.npy`` file of ``(rows, dim)`` float16 or float32 (search/store.py).
Re-ranking reads a few hundred scattered rows a query; through a memory map each row faults in
its whole page, and the kernel's read-around and fault-around map the neighbouring pages too
(64 KB or more per touched row, a large folio on newer kernels). Those pages count in the
searching process's resident set (``RssFile``) and stay mapped while the map lives, so over
many queries they add up to gigabytes at 10 M rows. :class:`SegmentFile` reads exactly the
bytes of the rows asked for (``os.preadv`` into a preallocated buffer, adjacent rows coalesced
into one read): the file's pages stay in the page cache, which is shared and not this
process's memory.

Every row returned is checked finite: a NaN or inf feature would rank silently wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, Path]
DTYPES = {"float32": np.float32, "float16": np.float16}


class IndexFolderError(ValueError):
    """An index folder that cannot be used: missing, corrupted, locked, or made by another model."""


def _data_offset(fh) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """(offset of the data, shape, dtype, fortran order) from an ``.npy`` file's header."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"npy version {version}")
    return fh.tell(), shape, dtype, fortran


class SegmentFile:
    """One segment, open for positional reads of its rows (no memory map)."""

    def __init__(self, path: PathLike, rows: int, dim: int, dtype: str) -> None:
        """Open ``path`` and check its header: ``rows`` x ``dim`` of ``dtype`` (``"float16"`` or
        ``"float32"``), C order, and a size that holds every row."""
        self.path = Path(path)
        self.rows, self.dim, self.dtype = int(rows), int(dim), np.dtype(DTYPES[dtype])
        self.row_bytes = self.dim * self.dtype.itemsize
        try:
            with open(self.path, "rb") as fh:
                self.offset, shape, stored, fortran = _data_offset(fh)
        except FileNotFoundError:
            raise IndexFolderError(f"{self.path} is missing; build the index again") from None
        except ValueError as exc:
            raise IndexFolderError(f"{self.path} is not a feature segment ({exc}); build the index again") from exc
        if shape != (self.rows, self.dim) or stored != self.dtype or fortran:
            raise IndexFolderError(f"{self.path}: shape {shape} {stored}, the manifest says ({self.rows}, "
                                   f"{self.dim}) {self.dtype}; build the index again")
        self._fd = os.open(self.path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if size != self.offset + self.rows * self.row_bytes:
            self.close()
            raise IndexFolderError(self._truncated(size))

    def __len__(self) -> int:
        return self.rows

    def _truncated(self, size: int) -> str:
        return (f"{self.path} is truncated or corrupted: {size} bytes, {self.offset + self.rows * self.row_bytes} "
                f"expected for {self.rows} x {self.dim} {self.dtype}; build the index again")

    def close(self) -> None:
        """Close the file (reads after this fail)."""
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    def _read_into(self, view: memoryview, first_row: int) -> None:
        """Fill ``view`` with the bytes of consecutive rows from ``first_row``; a short read is a truncated file."""
        pos, done = self.offset + first_row * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], pos + done)
            if got == 0:
                raise IndexFolderError(self._truncated(os.fstat(self._fd).st_size))
            done += got

    def _checked(self, block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``block`` (stored dtype, one line per row of ``rows``) as float32, after checking it is finite."""
        out = block.astype(np.float32)
        if not np.isfinite(out.sum()):  # a finite sum of unit rows proves every value finite
            bad = int(np.argmax(~np.isfinite(out).all(axis=1)))
            raise IndexFolderError(f"{self.path}: stored row {int(rows[bad])} is not finite (NaN or inf); "
                                   "the index is corrupted: build it again")
        return out

    def read_range(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as float32, ``(hi - lo, dim)``."""
        lo, hi = max(0, int(lo)), min(self.rows, int(hi))
        buf = np.empty((max(0, hi - lo), self.dim), dtype=self.dtype)
        if len(buf):
            self._read_into(memoryview(buf).cast("B"), lo)
        return self._checked(buf, np.arange(lo, lo + len(buf)))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows at local row numbers ``rows`` (any order, repeats allowed), ``(len(rows), dim)``.

        The distinct rows are read in ascending order, each run of adjacent rows in one read."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"{self.path}: rows outside 0..{self.rows - 1}")
        unique, inverse = np.unique(rows, return_inverse=True)
        buf = np.empty((len(unique), self.dim), dtype=self.dtype)
        view = memoryview(buf).cast("B")
        starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)  # where a run of adjacent rows begins
        for a, b in zip(starts, np.append(starts[1:], len(unique))):
            self._read_into(view[a * self.row_bytes:b * self.row_bytes], int(unique[a]))
        return self._checked(buf, unique)[inverse.reshape(-1)]
