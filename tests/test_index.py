"""The content-keyed image embedding cache (upperson.index)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from tests.conftest import perturbed_tiny_model, random_image, tiny_model_config
from upperson.data import build_transforms
from upperson.index import ImageIndex, embed_image_files, model_key
from upperson.model import build_model
from upperson.search.store import IndexStore


@pytest.fixture(scope="module")
def model():
    return perturbed_tiny_model()


_image = random_image


def _reference(model, paths) -> torch.Tensor:
    tf = build_transforms(model.image_size, train=False)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():  # the class's method: not counted by _Counter
        return F.normalize(type(model).encode_image(model, x).float(), dim=-1)


class _Counter:
    """Counts the images that go through ``model.encode_image``."""

    def __init__(self, model, monkeypatch):
        self.n = 0
        orig = model.encode_image

        def counted(images):
            self.n += int(images.shape[0])
            return orig(images)

        monkeypatch.setattr(model, "encode_image", counted)


def test_incremental_reindex_encodes_only_new_and_changed(model, tmp_path, monkeypatch):
    folder = tmp_path / "gallery"
    folder.mkdir()
    paths = [_image(folder / f"{i}.png", i) for i in range(5)]
    counter = _Counter(model, monkeypatch)

    first = ImageIndex(model, tmp_path / "cache", batch_size=2, progress=False).embed(paths)
    assert counter.n == 5 and first.encoded == 5 and first.skipped == []
    assert first.paths == paths
    torch.testing.assert_close(first.features, _reference(model, paths), atol=1e-5, rtol=1e-4)

    # same files again, a fresh index read from disk: nothing is encoded
    again = ImageIndex(model, tmp_path / "cache", progress=False).embed(paths)
    assert counter.n == 5 and again.encoded == 0
    torch.testing.assert_close(again.features, first.features)

    # add one file, change another: exactly two are encoded
    paths.append(_image(folder / "new.png", 100))
    _image(paths[2], 200)
    third = ImageIndex(model, tmp_path / "cache", progress=False).embed(paths)
    assert counter.n == 7 and third.encoded == 2
    torch.testing.assert_close(third.features, _reference(model, paths), atol=1e-5, rtol=1e-4)

    # a renamed file is recognised by content
    moved = folder / "renamed.png"
    paths[0].rename(moved)
    fourth = ImageIndex(model, tmp_path / "cache", progress=False).embed([moved])
    assert counter.n == 7 and fourth.encoded == 0
    torch.testing.assert_close(fourth.features[0], third.features[0])


def test_bad_files_are_skipped_counted_and_named(model, tmp_path, caplog):
    folder = tmp_path / "g"
    folder.mkdir()
    good = [_image(folder / f"{i}.png", i) for i in range(2)]
    text = folder / "notes.txt"
    text.write_text("not an image")
    truncated = folder / "broken.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    fake = folder / "fake.jpg"
    fake.write_bytes(b"\xff\xd8\xff\xe0garbage")
    missing = folder / "gone.png"
    with caplog.at_level(logging.WARNING, logger="upperson.index"):
        feats, kept, skipped = embed_image_files(model, [good[0], text, truncated, fake, missing, good[1]],
                                                 cache_dir=tmp_path / "cache", progress=False)
    assert kept == good
    assert feats.shape[0] == 2
    assert sorted(p.name for p, _ in skipped) == ["broken.png", "fake.jpg", "gone.png", "notes.txt"]
    assert "skipped 4 of 6" in caplog.text
    for name in ("notes.txt", "broken.png", "fake.jpg", "gone.png"):
        assert name in caplog.text
    torch.testing.assert_close(feats, _reference(model, good), atol=1e-5, rtol=1e-4)


def test_only_bad_files_give_an_empty_result(model, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("nope")
    feats, kept, skipped = embed_image_files(model, [bad], cache_dir=tmp_path / "c", progress=False)
    assert feats.shape[0] == 0 and kept == [] and len(skipped) == 1


def test_model_key_follows_petl_weights(model, tmp_path):
    key = model_key(model)
    assert key == model_key(model)
    other = build_model(tiny_model_config())
    other.load_state_dict(model.state_dict())
    assert model_key(other) == key
    with torch.no_grad():
        next(p for p in other.parameters() if p.requires_grad).add_(1e-3)
    assert model_key(other) != key

    img = _image(tmp_path / "a.png", 1)
    a = ImageIndex(model, tmp_path / "cache", progress=False)
    b = ImageIndex(other, tmp_path / "cache", progress=False)
    assert a.dir != b.dir
    fa, fb = a.embed([img]), b.embed([img])
    assert fa.encoded == 1 and fb.encoded == 1  # the second model does not reuse the first's rows
    assert not torch.allclose(fa.features, fb.features)


def test_corrupt_cache_is_rebuilt(model, tmp_path):
    img = _image(tmp_path / "a.png", 3)
    index = ImageIndex(model, tmp_path / "cache", progress=False)
    index.embed([img])
    index.path.write_bytes(b"garbage")
    again = ImageIndex(model, tmp_path / "cache", progress=False).embed([img])
    assert again.encoded == 1
    torch.testing.assert_close(again.features, _reference(model, [img]), atol=1e-5, rtol=1e-4)


OLD_CACHE = Path(__file__).parent / "data" / "feature_cache_v2"  # written by ImageIndex before index folders


def test_an_old_format_cache_is_rebuilt_not_misread(model, tmp_path, caplog, monkeypatch):
    """A cache folder in the safetensors format (the fixture: three rows, written by the code before
    the cache became an index folder) is rebuilt with one warning, then read as an index folder."""
    folder = tmp_path / "g"
    folder.mkdir()
    paths = [_image(folder / f"img{i:02d}.png", i) for i in range(3)]  # the fixture's three images
    old = tmp_path / "cache" / model_key(model)
    shutil.copytree(OLD_CACHE, old)
    counter = _Counter(model, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="upperson.index"):
        res = ImageIndex(model, tmp_path / "cache", progress=False).embed(paths)
    assert counter.n == 3 and res.encoded == 3
    assert caplog.text.count("rebuilding the feature cache: old format") == 1
    torch.testing.assert_close(res.features, _reference(model, paths), atol=1e-5, rtol=1e-4)
    assert not (old / "images.safetensors").exists() and (old / "manifest.json").is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upperson.index"):
        again = ImageIndex(model, tmp_path / "cache", progress=False).embed(paths)
    assert again.encoded == 0 and counter.n == 3 and "old format" not in caplog.text
    torch.testing.assert_close(again.features, res.features, atol=0, rtol=0)


def test_the_cache_is_an_index_folder_and_an_update_appends(model, tmp_path):
    """The cache folder opens as an index; adding a file appends a segment and an entry table and
    leaves every file already written as it was."""
    folder = tmp_path / "g"
    folder.mkdir()
    paths = [_image(folder / f"{i}.png", i) for i in range(4)]
    index = ImageIndex(model, tmp_path / "cache", progress=False)
    index.embed(paths[:3])
    written = {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
               for sub in ("segments", "entries") for p in (index.dir / sub).iterdir()}
    res = index.embed(paths)
    assert res.encoded == 1
    store = IndexStore.open(index.dir)
    assert [s["rows"] for s in store.manifest.segments] == [3, 1] and len(store.manifest.entry_tables) == 2
    assert all((p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) == was for p, was in written.items())
    row = {e.sha1: i for i, e in enumerate(store.manifest.entries)}
    got = store.features_of([row[d] for d in res.digests])
    np.testing.assert_array_equal(got, res.features.numpy())  # bit for bit what embed returned
    torch.testing.assert_close(res.features, _reference(model, paths), atol=1e-5, rtol=1e-4)
