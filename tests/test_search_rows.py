"""Positional reads of stored rows (search/rows.py) against the rows numpy reads from the same files.

``IndexStore.rows_at`` (the re-rank's gather) and ``IndexStore.chunks`` (the exact scans) read
segments with ``os.preadv`` instead of a memory map; each must return exactly the stored rows,
in the order asked, and refuse a non-finite stored row or a truncated file with one clear error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from upperson.search.engine import ExactSearch
from upperson.search.entries import EntryTable
from upperson.search.rows import SegmentFile
from upperson.search.store import SEGMENTS, IndexFolderError, IndexStore, Manifest, write_manifest, write_segment

SIZES = (7, 1, 12)  # three segments, one of a single row


def _store(folder: Path, dtype: str, dim: int = 6, sizes=SIZES, seed: int = 0) -> tuple[IndexStore, np.ndarray]:
    """An index folder of unit rows in segments of ``sizes``; the store and every row as float32."""
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        parts.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype))
    records = [write_segment(folder, i, p) for i, p in enumerate(parts)]
    seg = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    row = np.concatenate([np.arange(n) for n in sizes])
    entries = EntryTable.from_columns([f"f{i}" for i in range(len(seg))], seg, row)
    write_manifest(folder, Manifest(model={"key": "t"}, dim=dim, dtype=dtype, segments=records, entries=entries))
    reference = np.concatenate([np.load(folder / SEGMENTS / r["name"], allow_pickle=False) for r in records])
    return IndexStore.open(folder), reference.astype(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_rows_at_equals_the_stored_rows_in_any_order_with_repeats(tmp_path, dtype):
    store, reference = _store(tmp_path, dtype)
    total = len(reference)
    rng = np.random.default_rng(1)
    boundaries = np.array([0, 6, 7, 8, 19, total - 1])  # first and last rows of each segment
    for ids in (rng.integers(0, total, 40), np.arange(total)[::-1], boundaries, np.array([5, 5, 5, 6, 4]),
                np.array([], dtype=np.int64), rng.permutation(total)):
        got = store.rows_at(ids)
        assert got.dtype == np.float32 and got.shape == (len(ids), reference.shape[1])
        np.testing.assert_array_equal(got, reference[ids])
    np.testing.assert_array_equal(store.features_of([3, 0, 3]), reference[[3, 0, 3]])
    with pytest.raises(IndexError):
        store.rows_at(np.array([total]))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunks_stream_every_row_once_in_order(tmp_path, dtype):
    store, reference = _store(tmp_path, dtype)
    for size in (1, 5, 100):
        got = list(store.chunks(size))
        assert all(len(c) <= size for _, c in got)
        assert [first for first, _ in got] == sorted({first for first, _ in got})
        np.testing.assert_array_equal(np.concatenate([c for _, c in got]), reference)
    # the exact scan on them equals scores computed here
    q = reference[[2, 9]]
    np.testing.assert_allclose(ExactSearch(store).row_scores(q), q @ reference.T, rtol=1e-6, atol=1e-6)


def test_segment_file_coalesces_adjacent_rows_into_one_read(tmp_path, monkeypatch):
    store, reference = _store(tmp_path, "float16", sizes=(30,))
    calls = []
    real = __import__("os").preadv

    def counting(fd, buffers, offset):
        calls.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr("upperson.search.rows.os.preadv", counting)
    got = store.files[0].read_rows(np.array([12, 3, 4, 5, 13, 20, 4]))
    np.testing.assert_array_equal(got, reference[[12, 3, 4, 5, 13, 20, 4]])
    assert len(calls) == 3  # 3-5, 12-13 and 20


def test_a_non_finite_stored_row_is_refused(tmp_path):
    store, _ = _store(tmp_path, "float16")
    path = store.files[1].path
    raw = bytearray(path.read_bytes())
    raw[store.files[1].offset:store.files[1].offset + 2] = np.array([np.nan], np.float16).tobytes()
    path.write_bytes(bytes(raw))  # segment 1's only row (global row 7); sizes unchanged
    store = IndexStore.open(tmp_path, verify=False)
    np.testing.assert_array_equal(store.rows_at(np.array([0, 8])).shape, (2, 6))  # other rows still read
    with pytest.raises(IndexFolderError, match=r"000001\.npy: stored row 0 is not finite"):
        store.rows_at(np.array([3, 7]))
    with pytest.raises(IndexFolderError, match="not finite"):
        list(store.chunks(4))
    with pytest.raises(IndexFolderError, match="not finite"):
        ExactSearch(store).search(np.ones(6, np.float32) / 6 ** 0.5, 3)


def test_a_truncated_segment_is_refused_at_open_and_while_reading(tmp_path):
    store, _ = _store(tmp_path, "float32")
    path = store.files[2].path
    with pytest.raises(IndexFolderError, match="truncated"):
        SegmentFile(path, SIZES[2] + 1, 6, "float32")  # a file shorter than its rows
    with pytest.raises(IndexFolderError, match=r"shape \(12, 6\) float32, the manifest says \(12, 6\) float16"):
        SegmentFile(path, SIZES[2], 6, "float16")
    path.write_bytes(path.read_bytes()[:-7])  # cut after the store opened it
    with pytest.raises(IndexFolderError, match="000002.npy is truncated"):
        store.rows_at(np.array([0, 19]))
    with pytest.raises(IndexFolderError, match="truncated"):
        IndexStore.open(tmp_path, verify=False)
