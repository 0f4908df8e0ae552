"""Attack battery, faults: the app and the feature cache under a changing folder, slow files, bombs, bad disks.

Every expected answer is computed directly with the model (reference features of the file a
result names), never taken from the demo's own code. Sizes are tiny: a few 24 x 12 images,
sparse files for size, lowered limits for pixels and uploads, a patched writer for a full disk.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from tests.conftest import perturbed_tiny_model, random_image
from upperson.data import build_tokenizer, build_transforms

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

QUERY = "a woman in a red coat"


@pytest.fixture(scope="module")
def model():
    return perturbed_tiny_model()


_image = random_image


def _folder(root: Path, n: int, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [_image(root / f"img{i:02d}.png", i) for i in range(start, start + n)]


@torch.no_grad()
def _ref_scores(model, paths: list[Path], text: str = QUERY) -> dict[str, float]:
    """File name -> cosine similarity with ``text``, computed with the UP-Person model itself."""
    tf = build_transforms(model.image_size, train=False)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    img = F.normalize(type(model).encode_image(model, x).float(), dim=-1)
    tokens = build_tokenizer(model.config.name)(" ".join(text.split()))
    txt = F.normalize(type(model).encode_text(model, tokens).float(), dim=-1)[0]
    return {p.name: float(s) for p, s in zip(paths, (img @ txt).tolist())}


def _engine(model, gallery, tmp_path: Path, **kw):
    from demo.search import SearchEngine

    return SearchEngine(model, gallery, cache_dir=tmp_path / "cache", progress=False, query_threads=1, **kw)


class _Pictures:
    """Stands in for demo.thumbs.ImageFiles: the 'thumbnail' of a file is its path."""

    def thumbnail(self, src, relevant=None, height=160):
        return str(src)


def _pictured(engine, key, ranking) -> list[str]:
    """The file names the app's result grid would picture for ``ranking``."""
    from demo.app import _gallery_value

    return [Path(p).name for p, _ in _gallery_value(engine, key, ranking, _Pictures())]


# ----------------------------------------------------------------------------- one snapshot per result
def test_deleted_file_names_pictures_scores_and_clicks_agree(model, tmp_path):
    """A file deleted after indexing: every result names, pictures and scores the same existing file."""
    from demo.gallery import folder_gallery
    from demo.search import UPPERSON, ZERO_SHOT

    paths = _folder(tmp_path / "g", 6)
    engine = _engine(model, folder_gallery(tmp_path / "g"), tmp_path)
    paths[0].unlink()
    ref = _ref_scores(model, paths[1:])
    result = engine.search(QUERY, 6, variants=(UPPERSON, ZERO_SHOT))
    for ranking in result.rankings:
        names = [h.file for h in ranking.hits]
        assert paths[0].name not in names
        assert _pictured(engine, engine.default_gallery, ranking) == names
    main = result.rankings[0]
    assert sorted(h.file for h in main.hits) == sorted(ref)
    for h in main.hits:
        assert h.score == pytest.approx(ref[h.file], abs=1e-4)
        assert engine.explain(h.file)[2].path.name == h.file  # a click explains the pictured file
    assert any("changed" in n for n in result.notices)


def test_smaller_folder_after_a_search_is_no_index_error(model, tmp_path):
    """A result keeps its own snapshot: a folder re-indexed smaller meanwhile cannot shift or break it."""
    from demo.gallery import folder_gallery

    paths = _folder(tmp_path / "g", 8)
    engine = _engine(model, folder_gallery(tmp_path / "g"), tmp_path)
    result = engine.search(QUERY, 8)
    names = [h.file for h in result.rankings[0].hits]
    for p in paths[:5]:
        p.unlink()
    engine.set_gallery(folder_gallery(tmp_path / "g"))  # another visitor re-indexes it: 3 images
    assert len(engine.gallery) == 3
    assert _pictured(engine, engine.default_gallery, result.rankings[0]) == names


def test_folder_changing_during_searches_never_mixes(model, tmp_path):
    """Files vanish and come back (same name, same content) while three threads search: no mix, no bare error."""
    from demo.gallery import folder_gallery
    from demo.search import UPPERSON, ZERO_SHOT, QueryError

    paths = _folder(tmp_path / "g", 8)
    ref = _ref_scores(model, paths)
    blobs = {p: p.read_bytes() for p in paths}
    engine = _engine(model, folder_gallery(tmp_path / "g"), tmp_path)
    stop, bad, done = threading.Event(), [], [0]

    def churn() -> None:
        i = 0
        while not stop.is_set():
            p = paths[1 + i % 7]
            if p.exists():
                p.unlink()
            else:
                p.write_bytes(blobs[p])
            try:
                engine.set_gallery(folder_gallery(tmp_path / "g"))
            except Exception as exc:  # an empty folder is refused by name; anything else is a fault
                if "no files" not in str(exc):
                    bad.append(f"re-indexing: {exc!r}")
            i += 1

    def check(result) -> None:
        for ranking in result.rankings:
            names = [h.file for h in ranking.hits]
            if _pictured(engine, engine.default_gallery, ranking) != names:
                bad.append(f"pictures differ from {names}")
        for h in result.rankings[0].hits:
            if abs(h.score - ref[h.file]) > 1e-4:
                bad.append(f"{h.file}: score {h.score} != {ref[h.file]}")

    def search() -> None:
        for _ in range(8):
            try:
                check(engine.search(QUERY, 8, variants=(UPPERSON, ZERO_SHOT)))
                done[0] += 1
            except QueryError:
                continue
            except Exception as exc:  # a bare error in the UI
                bad.append(repr(exc))

    t = threading.Thread(target=churn)
    t.start()
    workers = [threading.Thread(target=search) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    t.join()
    assert bad == [] and done[0] > 0


# ----------------------------------------------------------------------------- one visitor cannot block the others
def test_indexing_a_slow_folder_does_not_block_other_searches(model, tmp_path, monkeypatch):
    """Encoding a new folder (patched to take 1 s) runs outside the engine lock: another search is quick."""
    from demo.gallery import folder_gallery
    from upperson.index import ImageIndex

    _folder(tmp_path / "default", 3)
    engine = _engine(model, folder_gallery(tmp_path / "default"), tmp_path)
    _folder(tmp_path / "slow", 2, start=50)
    started = threading.Event()
    encode = ImageIndex._encode

    def slow(self, images, m):
        started.set()
        time.sleep(1.0)
        return encode(self, images, m)

    monkeypatch.setattr(ImageIndex, "_encode", slow)
    other = threading.Thread(target=engine.add_gallery, args=(folder_gallery(tmp_path / "slow"),))
    other.start()
    assert started.wait(10)
    t0 = time.monotonic()
    engine.search(QUERY, 3)
    waited = time.monotonic() - t0
    other.join()
    assert waited < 0.5, f"a search waited {waited:.2f} s for another visitor's indexing"
    assert len(engine.galleries) == 2


# ----------------------------------------------------------------------------- limits
def test_oversized_file_is_skipped_unread_with_the_limit_named(model, tmp_path, caplog, monkeypatch):
    """A 60 MB sparse file is over the default 50 MB per image: skipped and named, its bytes never hashed."""
    import hashlib

    from upperson.index import ImageIndex

    paths = _folder(tmp_path / "g", 2)
    big = tmp_path / "g" / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(60 * 2**20)
    read = []
    sha1 = hashlib.sha1

    class Counting:
        def __init__(self, *a):
            self.h = sha1(*a)

        def update(self, b):
            read.append(len(b))
            self.h.update(b)

        def hexdigest(self):
            return self.h.hexdigest()

        def digest(self):
            return self.h.digest()

    monkeypatch.setattr(hashlib, "sha1", Counting)
    with caplog.at_level(logging.WARNING, logger="upperson.index"):
        res = ImageIndex(model, tmp_path / "cache", progress=False).embed(paths + [big])
    assert res.paths == paths
    (p, why), = res.skipped
    assert p == big and "50 MB" in why and "60" in why
    assert sum(read) < 2**20  # the two small images only
    assert "big.png" in caplog.text


def test_pixel_bomb_is_refused_from_its_header(model, tmp_path, monkeypatch):
    """Over the pixel limit (lowered to 200 here; 24 x 12 = 288 pixels): refused before decoding."""
    from upperson.index import ImageIndex, IndexLimits

    paths = _folder(tmp_path / "g", 2)
    small = tmp_path / "g" / "small.png"
    Image.new("RGB", (10, 10)).save(small)
    decoded = []
    load = Image.Image.load

    def counted(self):
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(Image.Image, "load", counted)
    index = ImageIndex(model, tmp_path / "cache", progress=False, limits=IndexLimits(max_pixels=200))
    res = index.embed(paths + [small])
    assert res.paths == [small]
    assert {p for p, _ in res.skipped} == set(paths)
    assert all("288 pixels" in why and "200" in why for _, why in res.skipped)
    assert (24, 12)[::-1] not in decoded and (12, 24) not in decoded


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1e9"])
@pytest.mark.parametrize("flag", ["--max-image-mb", "--max-image-mp", "--max-upload-mb"])
def test_limit_flags_out_of_range_are_one_error_line(flag, value, capsys):
    from demo.__main__ import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([flag, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert flag in err and "whole number from 1" in err


def test_limit_flags_reach_the_index_and_the_server():
    from demo.__main__ import build_parser, index_limits

    args = build_parser().parse_args(["--max-image-mb", "7", "--max-image-mp", "3", "--max-upload-mb", "2"])
    limits = index_limits(args)
    assert (limits.max_file_bytes, limits.max_pixels) == (7 * 2**20, 3_000_000)
    assert args.max_upload_mb == 2
    default = index_limits(build_parser().parse_args([]))
    assert (default.max_file_bytes, default.max_pixels) == (50 * 2**20, 50_000_000)


def test_upload_over_the_limit_is_refused(tmp_path):
    """The app's launch() sets Gradio's max_file_size (lowered to 2 KB here; the default is 20 MB)."""
    import gradio as gr
    import httpx

    from demo.app import launch
    from tests.test_demo_support import free_port

    with gr.Blocks() as app:  # the upload route is the server's, whatever the page holds
        gr.Markdown("uploads")
    _, url, _ = launch(app, roots=[tmp_path], port=free_port(), prevent_thread_lock=True, quiet=True,
                       max_file_size=2048)
    try:
        with httpx.Client(timeout=20) as http:
            small = http.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": ("a.txt", b"x" * 1000)})
            big = http.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": ("b.txt", b"x" * 5000)})
        assert small.status_code == 200
        assert big.status_code in (400, 413) and "maximum allowed size" in big.text
    finally:
        app.close()


# ----------------------------------------------------------------------------- symlink loops
def test_symlink_loop_gallery_is_one_error_line(tmp_path, capsys):
    from demo.__main__ import main

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main(["--gallery", str(loop)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "loop" in err and "symbolic link" in err


def test_symlink_loop_chosen_in_the_ui_is_a_message(model, tmp_path):
    from demo.context import DemoContext
    from demo.gallery import GalleryError, folder_gallery

    _folder(tmp_path / "allowed" / "ok", 2)
    (tmp_path / "allowed" / "ok" / "self").symlink_to(tmp_path / "allowed" / "ok" / "self")
    (tmp_path / "allowed" / "ok" / "up").symlink_to(tmp_path / "allowed")  # a folder link back up: not walked
    (tmp_path / "allowed" / "loop").symlink_to(tmp_path / "allowed" / "loop")
    ctx = DemoContext(_engine(model, folder_gallery(tmp_path / "allowed" / "ok"), tmp_path),
                      allow_roots=[tmp_path / "allowed"])
    with pytest.raises(GalleryError, match="symbolic link"):
        ctx.with_folder(None, "loop")
    state = ctx.with_folder(None, "ok")
    assert len(ctx.gallery(state)) == 2


# ----------------------------------------------------------------------------- the feature cache
def _index(model, tmp_path, **kw):
    from upperson.index import ImageIndex

    return ImageIndex(model, tmp_path / "cache", progress=False, **kw)


def _forge(folder: Path, case: str) -> None:
    """Change the cache folder ``folder`` as ``case`` says; a forgery keeps the checksums consistent."""
    from upperson.search.entries import EntryTable
    from upperson.search.store import IndexStore, write_manifest, write_segment

    seg = folder / "segments" / "000000.npy"
    if case == "truncated":
        seg.write_bytes(seg.read_bytes()[:-40])
        return
    if case == "garbage-manifest":
        (folder / "manifest.json").write_text("{")
        return
    store = IndexStore.open(folder)
    manifest = store.manifest
    x = np.array(store.segments[0])
    if case == "dup-digest":
        entries = list(manifest.entries)
        entries[1] = dataclasses.replace(entries[0], row=entries[1].row)
        manifest.entries = EntryTable.from_entries(entries)
    else:
        if case == "nan":
            x[1] = np.nan
        x = x * 3 if case == "scaled" else x.astype(np.float16) if case == "float16" else x
        manifest.dtype = str(x.dtype)
        manifest.segments[0] = write_segment(folder, 0, x)
    write_manifest(folder, manifest)


@pytest.mark.parametrize("case", ["scaled", "nan", "float16", "truncated", "dup-digest", "garbage-manifest"])
def test_tampered_cache_is_rebuilt_not_misread(model, tmp_path, caplog, case):
    paths = _folder(tmp_path / "g", 3)
    first = _index(model, tmp_path).embed(paths)
    _forge(_index(model, tmp_path).dir, case)
    with caplog.at_level(logging.WARNING, logger="upperson.index"):
        again = _index(model, tmp_path).embed(paths)
    assert again.encoded == 3
    torch.testing.assert_close(again.features, first.features, atol=1e-5, rtol=1e-4)
    assert caplog.text.count("it will be rebuilt") == 1


def test_symlinked_cache_file_is_not_followed(model, tmp_path):
    """A cache file that is a link (here to a valid cache elsewhere) is neither read nor written through."""
    paths = _folder(tmp_path / "g", 2)
    elsewhere = _index(model, tmp_path / "elsewhere")
    elsewhere.embed(paths)
    before = elsewhere.path.read_bytes()
    index = _index(model, tmp_path)
    index.dir.mkdir(parents=True)
    index.path.symlink_to(elsewhere.path)
    res = _index(model, tmp_path).embed(paths)
    assert res.encoded == 2 and elsewhere.path.read_bytes() == before and not index.path.is_symlink()


def test_full_disk_keeps_features_in_memory_and_leaves_no_temp_file(model, tmp_path, caplog, monkeypatch):
    import upperson.io

    paths = _folder(tmp_path / "g", 3)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upperson.io.os, "fsync", full)
    with caplog.at_level(logging.WARNING, logger="upperson.index"):
        res = _index(model, tmp_path).embed(paths)
    monkeypatch.setattr(upperson.io.os, "fsync", real)
    ref = _index(model, tmp_path / "ref").embed(paths)
    torch.testing.assert_close(res.features, ref.features)
    assert "No space left" in caplog.text and str(tmp_path / "cache") in caplog.text
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not any(n.endswith(".tmp") for n in leftovers) and "manifest.json" not in leftovers


def test_two_writers_of_one_cache_keep_both_rows(model, tmp_path):
    """Two processes (two index objects) add different files to one cache: neither's rows are lost."""
    a = _folder(tmp_path / "a", 2)
    b = _folder(tmp_path / "b", 2, start=10)
    first, second = _index(model, tmp_path), _index(model, tmp_path)  # both loaded the empty cache
    first.embed(a)
    second.embed(b)
    assert _index(model, tmp_path).embed(a + b).encoded == 0
