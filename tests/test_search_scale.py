"""Index folders at scale: the compact entry table, old (version 1) folders, and a large gallery with bad files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upperson.search import build as build_module
from upperson.search.build import build_index
from upperson.search.entries import ENTRIES_DIR, EntryTable
from upperson.search.store import (MANIFEST, Entry, IndexFolderError, IndexStore, Manifest, write_manifest,
                                   write_segment)

from tests.conftest import tiny_model_config
from upperson.model import build_model


def _store(tmp_path: Path, n: int = 300) -> list[Entry]:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((50, 8)).astype(np.float32)
    records = [write_segment(tmp_path, 0, feats / np.linalg.norm(feats, axis=1, keepdims=True))]
    entries = [Entry(f"/g/{i}-é.png", 0, int(rng.integers(0, 50)), f"{i:040x}", i, 10 * i) for i in range(n)]
    write_manifest(tmp_path, Manifest(model={"key": "k"}, dim=8, dtype="float32", segments=records, entries=entries))
    return entries


def test_the_manifest_lists_an_entry_table_not_one_record_per_image(tmp_path):
    entries = _store(tmp_path, n=5000)
    raw = json.loads((tmp_path / MANIFEST).read_text())
    assert raw["version"] == 3 and "entries" not in raw and raw["entry_tables"][0]["entries"] == 5000
    assert (tmp_path / MANIFEST).stat().st_size < 2000  # a few hundred bytes, whatever the gallery's size
    store = IndexStore.open(tmp_path)
    assert isinstance(store.manifest.entries, EntryTable) and list(store.manifest.entries) == entries
    assert store.manifest.entries[-1] == entries[-1] and store.manifest.entries[10:12] == entries[10:12]
    # a rewrite (most entries removed) leaves one table: the one the manifest lists
    store.manifest.entries = entries[:10]
    write_manifest(tmp_path, store.manifest)
    assert [p.name for p in (tmp_path / ENTRIES_DIR).iterdir()] == [store.manifest.entry_tables[0]["name"]]
    assert list(IndexStore.open(tmp_path).manifest.entries) == entries[:10]


def test_a_tampered_or_missing_entry_table_is_refused(tmp_path):
    _store(tmp_path)
    table = tmp_path / ENTRIES_DIR / json.loads((tmp_path / MANIFEST).read_text())["entry_tables"][0]["name"]
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 1
    table.write_bytes(bytes(data))
    with pytest.raises(IndexFolderError, match="corrupted.*build the index again"):
        IndexStore.open(tmp_path)
    table.unlink()
    with pytest.raises(IndexFolderError, match="missing"):
        IndexStore.open(tmp_path)


def test_a_version_1_folder_still_opens_and_is_rewritten_as_version_3(tmp_path):
    entries = _store(tmp_path)
    raw = json.loads((tmp_path / MANIFEST).read_text())
    table = raw.pop("entry_tables")[0]
    (tmp_path / ENTRIES_DIR / table["name"]).unlink()
    raw |= {"version": 1, "entries": [e.as_list() for e in entries]}  # the layout version 1 wrote
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    store = IndexStore.open(tmp_path)
    assert list(store.manifest.entries) == entries and store.manifest.entry_tables is None
    np.testing.assert_array_equal(store.features_of([0, 5]),
                                  np.load(tmp_path / "segments" / "000000.npy")[[entries[0].row, entries[5].row]])
    write_manifest(tmp_path, store.manifest)
    assert json.loads((tmp_path / MANIFEST).read_text())["version"] == 3
    assert list(IndexStore.open(tmp_path).manifest.entries) == entries


def test_a_version_2_folder_still_opens_and_its_next_update_writes_version_3(tmp_path):
    """Version 2 (one entry table without order keys, as main wrote it) opens unchanged."""
    entries = _store(tmp_path)
    raw = json.loads((tmp_path / MANIFEST).read_text())
    for r in raw.pop("entry_tables"):
        (tmp_path / ENTRIES_DIR / r["name"]).unlink()
    raw |= {"version": 2, "entry_table": EntryTable.from_entries(entries).write(tmp_path)}  # no order column
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    store = IndexStore.open(tmp_path)
    assert list(store.manifest.entries) == entries and store.manifest.entry_tables is None
    store.manifest.entries = entries + [Entry("/g/new.png", 0, 3, "f" * 40, 1, 1)]
    write_manifest(tmp_path, store.manifest)
    raw = json.loads((tmp_path / MANIFEST).read_text())
    assert raw["version"] == 3 and len(raw["entry_tables"]) == 1 and "entry_table" not in raw
    assert list(IndexStore.open(tmp_path).manifest.entries) == entries + [Entry("/g/new.png", 0, 3, "f" * 40, 1, 1)]


class _StubEncoder(torch.nn.Module):
    """A feature per image from its mean pixel: no network, so thousands of files take a second."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(1, 2, 3))[:, None], torch.ones(len(x), 3)], dim=1)


def test_a_large_gallery_with_some_unreadable_files_gives_one_summary(tmp_path, monkeypatch, caplog):
    gallery = tmp_path / "gallery"
    # 10,000 files, not 100,000: creating 100,000 files alone takes 14 s here (2 shared cores); the
    # 100,000-file case is `python -m upperson benchmark --index-files 100000` (docs/performance.md)
    n, bad_every = 10_000, 100
    for d in range(20):
        (gallery / f"{d:02d}").mkdir(parents=True)
    pixel = Image.new("RGB", (2, 6))
    for i in range(n):  # distinct small contents; every 100th is not an image, one is a dangling link
        path = f"{gallery}/{i % 20:02d}/{i:06d}.png"  # plain os calls: a third of pathlib's time
        if i == 77:
            os.symlink(tmp_path / "gone.png", path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"garbage %d" % i if i % bad_every == 0 else b"img %d" % i)
            os.close(fd)

    def decode(path: Path, limits) -> Image.Image:
        data = path.read_bytes()
        if not data.startswith(b"img"):
            raise OSError(f"cannot identify image file {str(path)!r}")
        return pixel

    model = build_model(tiny_model_config(pretrained="random")).eval()
    monkeypatch.setattr(build_module, "load_image", decode)  # the decoder and the network patched out
    monkeypatch.setattr(build_module, "build_transforms", lambda size, train: lambda im: torch.zeros(3, 6, 2))
    monkeypatch.setattr(build_module, "inference_model", lambda m: _StubEncoder())
    out = tmp_path / "index"
    with caplog.at_level(logging.WARNING):
        report = build_index(model, gallery, out, source="test", progress=False, batch_size=4096, segment_rows=50_000)
    unreadable = n // bad_every + 1
    assert report.listed == n and report.indexed == n - unreadable and len(report.skipped) == unreadable
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("upperson.search")]
    assert len(warnings) == 1 and f"skipped {unreadable} of {n} " in warnings[0].getMessage()
    assert "and 91 more (listed in" in warnings[0].getMessage()
    store = IndexStore.open(out)
    assert store.manifest.complete and len(store) == n - unreadable and len(store.manifest.skipped) == unreadable
    assert {why.split(" (")[0] for _, why in store.manifest.skipped} == {"not a readable image", "cannot read"}
    assert sorted(p.name for p in out.iterdir()) == [".lock", ENTRIES_DIR, MANIFEST, "segments"]


def _clustered(tmp_path: Path, ids: int = 500, per: int = 20, dim: int = 16) -> tuple[IndexStore, np.ndarray]:
    rng = np.random.default_rng(3)
    x = np.repeat(rng.standard_normal((ids, dim)), per, axis=0) + 0.5 * rng.standard_normal((ids * per, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rows = np.arange(len(x))
    write_manifest(tmp_path, Manifest(model={"key": "k"}, dim=dim, dtype="float32", segments=[write_segment(tmp_path, 0, x)],
                                      entries=EntryTable.from_columns([f"/g/{i}" for i in rows], rows * 0, rows)))
    return IndexStore.open(tmp_path), x


def test_an_ivf_flat_index_probing_every_list_equals_exact_search(tmp_path):
    from upperson.search.approximate import AnnConfig, ApproximateSearch, build_ann

    store, x = _clustered(tmp_path)
    store.manifest.ann = build_ann(store, AnnConfig(kind="ivfflat", nlist=20, nprobe=20, recall_queries=50))
    write_manifest(tmp_path, store.manifest)
    assert store.manifest.ann["kind"] == "ivfflat" and store.manifest.ann["recall_at_10"] == 1.0
    search = ApproximateSearch(IndexStore.open(tmp_path))
    q = x[:7] + 0.01
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert [[h.entry for h in hits] for hits in search.search(q, 10)] == truth.tolist()


def test_the_features_benchmark_measures_recall_against_exact_with_the_query_left_out(tmp_path):
    from upperson.search.approximate import AnnConfig
    from upperson.search.benchmark import benchmark_features

    store, _ = _clustered(tmp_path)
    rows = benchmark_features(store, configs=[AnnConfig(kind="ivfflat", nlist=20)], shares=(0.05, 1.0), reranks=(11,),
                              queries=40, repeats=5)
    assert [r["engine"] for r in rows][:1] == ["torch"] and all(r["single_p50_ms"] > 0 for r in rows)
    approx = {r["probed"]: r for r in rows if r["engine"] == "approximate-ivfflat"}
    assert approx[1.0]["recall@10"] == 1.0 and approx[0.05]["nprobe"] == 1 and approx[0.05]["recall@10"] < 1.0


def test_streamed_top_rows_equal_a_full_sort_with_ties_and_the_query_left_out(tmp_path, monkeypatch):
    from upperson.search import engine as engine_module
    from upperson.search.engine import ExactSearch

    monkeypatch.setattr(engine_module, "CHUNK_ROWS", 7)  # many chunks, across two segments
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, (90, 8)).astype(np.float32) / 8  # exact products: many exact ties
    records = [write_segment(tmp_path, 0, x[:40]), write_segment(tmp_path, 1, x[40:])]
    rows = np.arange(90)
    write_manifest(tmp_path, Manifest(model={"key": "k"}, dim=8, dtype="float32", segments=records,
                                      entries=EntryTable.from_columns([str(i) for i in rows], rows >= 40, rows - 40 * (rows >= 40))))
    held = np.array([3, 41, 89, 0])
    got = ExactSearch(IndexStore.open(tmp_path)).top_rows(x[held], 10, exclude=held)
    scores = x[held].astype(np.float64) @ x.T.astype(np.float64)
    scores[np.arange(4), held] = -np.inf
    want = [sorted(range(90), key=lambda r: (-s[r], r))[:10] for s in scores]
    assert got.tolist() == want


def test_every_rank_indexes_rank_0s_listing_of_the_gallery(tmp_path, monkeypatch):
    """A file that appears while the ranks start must not give two ranks different file positions."""
    from upperson.search import shards
    from upperson.search.build import list_gallery, shared_listing
    from upperson.search.shards import Shard

    (tmp_path / "a.png").write_bytes(b"a")
    rank0 = list_gallery(tmp_path)

    class Rank1(Shard):
        def broadcast(self, value):  # what rank 0 sent
            assert value == (None, None)
            return rank0, None

    (tmp_path / "b.png").write_bytes(b"b")  # appears before rank 1 would have listed the folder
    monkeypatch.setattr(shards, "check_distributed", lambda: None)
    assert shared_listing(Rank1(rank=1, count=2), tmp_path) == rank0


def test_the_features_benchmark_ignores_rows_no_file_uses(tmp_path):
    """After updates an index holds rows no file uses: they are neither queries nor answers."""
    from upperson.search.approximate import AnnConfig
    from upperson.search.benchmark import benchmark_features

    store, x = _clustered(tmp_path)
    keep = np.arange(0, len(x), 3)  # two rows in three belong to no file (deleted since)
    store.manifest.entries = EntryTable.from_columns([f"/g/{i}" for i in keep], keep * 0, keep)
    write_manifest(tmp_path, store.manifest)
    rows = benchmark_features(IndexStore.open(tmp_path), configs=[AnnConfig(kind="ivfflat", nlist=20)],
                              shares=(1.0,), reranks=(64,), queries=40, repeats=5)
    assert [r["recall@10"] for r in rows if "nlist" in r] == [1.0]


def test_the_index_files_benchmark_reports_one_warning_and_a_clean_index(tmp_path):
    """The 100,000-file case's measurement (benchmark --index-files), at 300 files with the tiny model."""
    from upperson.search.filebench import benchmark_index_files

    model = build_model(tiny_model_config(pretrained="random")).eval()
    r = benchmark_index_files(model, 300, bad_every=50, distinct=5, workdir=tmp_path)
    assert r["ok"] and r["unreadable"] == 7 and r["skipped"] == 7 and r["indexed"] == 293 and r["warnings"] == 1
    assert r["encoded"] == 5 and "skipped 7 of 300" in r["warning"]
    assert 0 < r["appended_entry_bytes"] < r["entry_bytes"] / 2
    assert list(tmp_path.iterdir()) == []  # the gallery and the index are removed
