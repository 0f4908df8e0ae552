"""Index updates append: an entry table of what changed, the gallery equal to a fresh build's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upperson.model import build_model
from upperson.search import build as build_module
from upperson.search.build import build_index
from upperson.search.entries import ENTRIES_DIR, Entry, EntryTable, entry_delta, keyed, merged
from upperson.search import store as store_module
from upperson.search.store import MANIFEST, IndexStore

from tests.conftest import tiny_model_config


def _entry(name: str, version: int = 0) -> Entry:
    return Entry(f"/g/{name}", 0, version, f"{version:040x}", version, version)


def test_appended_deltas_give_exactly_the_new_gallery_in_its_order():
    """Random updates (insertions anywhere, removals, changes) applied as deltas equal the new list."""
    rng = np.random.default_rng(1)
    names = [f"{i:05d}" for i in range(0, 4000, 10)]
    current = [_entry(n) for n in names]
    tables = [keyed(EntryTable.from_entries(current))]
    for step in range(12):
        alive = {e.path[3:]: e for e in current}
        for n in rng.choice(sorted(alive), 5, replace=False):  # removed
            del alive[n]
        for n in rng.choice(sorted(alive), 5, replace=False):  # changed content
            alive[n] = _entry(n, step + 1)
        for n in rng.integers(0, 4000, 8):  # new, anywhere in the order
            alive.setdefault(f"{n:05d}", _entry(f"{n:05d}", 100 + step))
        wanted = [alive[n] for n in sorted(alive)]
        base = merged(tables)
        delta = entry_delta(base, EntryTable.from_entries(wanted))
        assert delta is not None and len(delta) <= 18  # only what changed is written
        tables.append(delta)
        assert list(merged(tables)) == wanted
        current = wanted


def test_an_append_that_cannot_keep_the_order_asks_for_a_full_write():
    base = keyed(EntryTable.from_entries([_entry("a"), _entry("b"), _entry("c")]))
    assert entry_delta(base, EntryTable.from_entries([_entry("b"), _entry("a"), _entry("c")])) is None
    squeezed = EntryTable.from_entries([_entry("a"), _entry("b")])
    squeezed.order = np.array([5, 6], dtype=np.int64)  # no key left between them
    assert entry_delta(squeezed, EntryTable.from_entries([_entry("a"), _entry("ab"), _entry("b")])) is None


class _StubEncoder(torch.nn.Module):
    """A feature per image from its mean pixel: no network."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(1, 2, 3))[:, None], torch.ones(len(x), 3)], dim=1)


@pytest.fixture
def stub_build(monkeypatch):
    """build_index with the decoder and the network patched out: a file's 'image' is its bytes' value."""
    def decode(path: Path, limits) -> Image.Image:
        return Image.new("RGB", (2, 6), (int(path.read_bytes()[4:]) % 251, 0, 0))

    monkeypatch.setattr(build_module, "load_image", decode)
    monkeypatch.setattr(build_module, "build_transforms",
                        lambda size, train: lambda im: torch.full((3, 6, 2), im.getpixel((0, 0))[0] / 251))
    monkeypatch.setattr(build_module, "inference_model", lambda m: _StubEncoder())
    model = build_model(tiny_model_config(pretrained="random")).eval()
    return lambda gallery, out, **kw: build_index(model, gallery, out, source="test", progress=False, **kw)


def _gallery(root: Path, names) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"img %d" % int(n.split("/")[-1][:5]))


def _entries_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (folder / ENTRIES_DIR).iterdir()}


def _same_gallery(a: Path, b: Path) -> None:
    sa, sb = IndexStore.open(a), IndexStore.open(b)
    ea, eb = list(sa.manifest.entries), list(sb.manifest.entries)
    assert [(e.path, e.sha1, e.size, e.mtime_ns) for e in ea] == [(e.path, e.sha1, e.size, e.mtime_ns) for e in eb]
    np.testing.assert_array_equal(sa.features_of(list(range(len(ea)))), sb.features_of(list(range(len(eb)))))


def test_an_update_of_one_new_file_writes_one_small_entry_table(tmp_path, stub_build):
    gallery, out = tmp_path / "g", tmp_path / "index"
    _gallery(gallery, [f"{d}/{i:05d}.png" for d in "ab" for i in range(0, 1000, 2)])
    stub_build(gallery, out)
    before = _entries_files(out)
    _gallery(gallery, ["a/00501.png"])  # sorts in the middle of the gallery
    report = stub_build(gallery, out)
    assert report.encoded == 1 and report.reused_unchanged == 1000
    after = _entries_files(out)
    new = {n: size for n, size in after.items() if n not in before}
    assert set(before) <= set(after) and len(new) == 1  # the old table is kept, one is appended
    raw = json.loads((out / MANIFEST).read_text())
    assert [r["entries"] for r in raw["entry_tables"]] == [1000, 1]
    assert sum(new.values()) < 4000 < sum(before.values()) / 10  # O(1) bytes: ~2 KB of npz headers
    stub_build(gallery, tmp_path / "fresh")
    _same_gallery(out, tmp_path / "fresh")


def test_removed_and_changed_files_append_and_many_updates_compact(tmp_path, stub_build, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_ENTRY_TABLES", 4)  # the rule, at a size that takes few builds
    gallery, out = tmp_path / "g", tmp_path / "index"
    _gallery(gallery, [f"{i:05d}.png" for i in range(40)])
    stub_build(gallery, out)
    (gallery / "00003.png").unlink()
    (gallery / "00007.png").write_bytes(b"img 999")
    stub_build(gallery, out)
    assert [r["entries"] for r in json.loads((out / MANIFEST).read_text())["entry_tables"]] == [40, 2]
    for k in range(4):
        _gallery(gallery, [f"{100 + k:05d}.png"])
        stub_build(gallery, out)
        tables = json.loads((out / MANIFEST).read_text())["entry_tables"]
        assert len(tables) <= 4 and len(_entries_files(out)) == len(tables)
    assert len(tables) < 4  # compacted once on the way
    stub_build(gallery, tmp_path / "fresh")
    _same_gallery(out, tmp_path / "fresh")
    stub_build(gallery, out, compact=True)
    assert len(json.loads((out / MANIFEST).read_text())["entry_tables"]) == 1
    _same_gallery(out, tmp_path / "fresh")
