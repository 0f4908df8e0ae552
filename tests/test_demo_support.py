"""Shared helpers of the demo tests: the tiny ToyPEDES data, the model, a launched app, references.

The data is generated once per test session (cached at module level, so every demo test
module shares it); UPPERSON_CACHE points to a temporary folder for the whole session.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional

import pytest
import torch
from PIL import Image
from torch.nn import functional as F

_TMP = Path(tempfile.mkdtemp(prefix="upperson-demo-tests-"))
atexit.register(shutil.rmtree, _TMP, True)


@functools.lru_cache(maxsize=None)
def toy_root() -> Path:
    """ToyPEDES ``tiny`` (seed 0), generated once into a temporary folder."""
    from upperson.data.toypedes import generate_toypedes

    root = _TMP / "data"
    generate_toypedes(root, preset="tiny", seed=0)
    return root


def session_cache() -> Path:
    path = _TMP / "cache"
    path.mkdir(exist_ok=True)
    return path


def load_model():
    """The embedded model (a random upp-tiny one until the trained assets exist)."""
    from upperson.embedded import load_embedded_model

    torch.manual_seed(0)
    return load_embedded_model("upperson").eval()


def engine(model, gallery, **kw):
    """A SearchEngine as the CLI makes it (one thread per query), on the session cache."""
    from demo.search import SearchEngine

    return SearchEngine(model, gallery, cache_dir=session_cache(), progress=False, query_threads=1, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(engine, allow_roots=(), roots=None, studies=()):
    """Launch the app in-process on a free localhost port; returns (app, url)."""
    from demo.app import build_app, launch

    app = build_app(engine, allow_roots=list(allow_roots), studies=list(studies))
    roots = list(roots if roots is not None else engine.gallery.roots) + list(allow_roots)
    _, url, _ = launch(app, roots=roots, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    return app, url.rstrip("/")


# ----------------------------------------------------------------------------- references
@torch.no_grad()
def image_features(model, paths) -> torch.Tensor:
    from upperson.data import build_transforms

    tf = build_transforms(model.image_size, train=False)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    return F.normalize(type(model).encode_image(model, x).float(), dim=-1)


@torch.no_grad()
def text_feature(model, text: str) -> torch.Tensor:
    from upperson.data import build_tokenizer

    tokens = build_tokenizer(model.config.name)(" ".join(text.split()))
    return F.normalize(type(model).encode_text(model, tokens).float(), dim=-1)[0]


def reference_ranking(model, paths, text: str, k: Optional[int] = None) -> tuple[list[int], list[float]]:
    """(indices, scores) of the top k gallery images for ``text``, computed directly with the model."""
    sim = image_features(model, paths) @ text_feature(model, text)
    order = torch.sort(sim, descending=True, stable=True).indices[: k or len(paths)]
    return order.tolist(), sim[order].tolist()


def zero_shot_of(model):
    """The frozen backbone of ``model``, built independently of the demo's code."""
    import dataclasses

    from upperson.embedded import zero_shot_config
    from upperson.model import build_model

    zs = build_model(dataclasses.replace(zero_shot_config(model.config), pretrained=None))
    src = model.state_dict()
    zs.load_state_dict({k: src[k] for k in zs.state_dict()})
    return zs.eval()


def use_session_cache() -> None:
    os.environ["UPPERSON_CACHE"] = str(session_cache())


# ----------------------------------------------------------------------------- unit tests of the support modules
INJECTIONS = [
    "<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "[a link](http://example.com)", "![img](x.png)",
    "**bold** _em_ `code` ~~del~~", "| a | b |\n|---|---|\n| 1 | 2 |", "# heading\n- item\n> quote",
    "&lt;already escaped&gt; &amp; &#60;", "a\\*b\\", "x < y > z & \"q\" 'r'", "一个穿红色外套的女人 👨‍🦰",
]


def test_markup_text_is_literal_text_in_markdown():
    """Rendered by a CommonMark renderer, an escaped value is one text run equal to the value itself."""
    import html
    import re

    from markdown_it import MarkdownIt

    from demo.markup import text

    md = MarkdownIt("commonmark").enable(["strikethrough", "table"])
    for value in INJECTIONS:
        out = md.render(f"**Query:** {text(value)}").strip()
        assert out.startswith("<p><strong>Query:</strong> ") and out.endswith("</p>"), (value, out)
        inner = out[len("<p><strong>Query:</strong> "):-len("</p>")]
        assert "<" not in inner, (value, out)  # no element at all
        assert html.unescape(inner) == " ".join(value.splitlines()), (value, out)
        assert not re.search(r"\n", inner)


def test_image_files_are_small_cached_and_content_addressed(tmp_path):
    from PIL import Image

    from demo.thumbs import THUMB_HEIGHT, ImageFiles

    big = tmp_path / "big.png"
    Image.new("RGB", (200, 600), (10, 200, 30)).save(big)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 60), (10, 200, 30)).save(small)
    files = ImageFiles()
    try:
        t = files.thumbnail(big)
        assert Image.open(t).size == (round(200 * THUMB_HEIGHT / 600), THUMB_HEIGHT)
        assert Path(t).stat().st_size < big.stat().st_size
        assert files.thumbnail(big) == t  # cached
        copy = tmp_path / "copy.png"
        copy.write_bytes(big.read_bytes())
        assert files.thumbnail(copy) == t  # same picture, same content-addressed file
        assert Image.open(files.thumbnail(small)).size == (20, 60)  # never upscaled
        framed = Image.open(files.thumbnail(small, relevant=True)).convert("RGB")
        assert framed.size == (24, 64) and max(abs(a - b) for a, b in zip(framed.getpixel((0, 0)), (46, 160, 67))) < 12
        assert files.thumbnail(small, relevant=False) != files.thumbnail(small, relevant=True)
        assert all(p.parent == files.dir for p in map(Path, (t,)))
    finally:
        files.cleanup()
    assert not files.dir.exists()


def test_person_id_and_top_k_parsing():
    from demo.app import parse_top_k
    from demo.search import PID_MAX, QueryError, parse_pid

    assert [parse_pid(v) for v in ("12", 12, 12.0, " 7 ", "1e3", str(PID_MAX))] == [12, 12, 12, 7, 1000, PID_MAX]
    assert all(parse_pid(v) is None for v in ("99999999999999999999999", str(PID_MAX + 1), "-1", "1.5", "nan",
                                              "inf", "abc", True, float("nan"), 2.5, ""))
    assert [parse_top_k(v) for v in (1, "20", 200.0, "5")] == [1, 20, 200, 5]
    for bad in (None, "abc", 0, 201, 2.5, float("inf"), True, "", [3]):
        with pytest.raises(QueryError, match="whole number from 1 to 200"):
            parse_top_k(bad)


def test_thumbnails_warm_in_the_background_and_framed_ones_derive_from_them(tmp_path):
    from PIL import Image

    from demo.thumbs import ImageFiles

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (60, 300), (40 * i, 10, 10)).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files = ImageFiles()
    try:
        files.warm(paths + [tmp_path / "bad.png"]).join(timeout=30)
        made = sorted(files.dir.glob("*.jpg"))
        assert len(made) == 5  # one per readable image, the bad one skipped
        assert {files.thumbnail(p) for p in paths} == {str(m) for m in made}  # served from the warm cache
        framed = files.thumbnail(paths[0], relevant=False)
        assert Image.open(framed).height == Image.open(files.thumbnail(paths[0])).height + 2 * 4
    finally:
        files.cleanup()
    assert not files.dir.exists()


def test_image_files_stay_under_their_byte_budget(tmp_path):
    """A long-running demo makes a new picture per (query, image) pair: the folder keeps the most
    recently used ones within ``max_bytes`` and forgets the rest (no longer servable, made again on demand)."""
    import numpy as np
    from PIL import Image

    from demo.thumbs import ImageFiles

    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(12)]
    files = ImageFiles(max_bytes=20_000)
    try:
        paths = [files.save(p, f"pic:{i}") for i, p in enumerate(pictures)]
        sizes = [Path(p).stat().st_size for p in paths[-3:]]
        assert min(sizes) > 4_000  # noise does not compress: each picture is a few kB
        on_disk = sum(f.stat().st_size for f in files.dir.iterdir())
        assert on_disk <= 20_000
        kept = [p for p in paths if Path(p).exists()]
        assert kept == paths[len(paths) - len(kept):] and 2 <= len(kept) < len(paths)  # the newest ones
        assert not files.may_serve(paths[0]) and all(files.may_serve(p) for p in kept)
        again = files.save(pictures[0], "pic:0")  # forgotten, so made again
        assert again == paths[0] and Path(again).exists() and files.may_serve(again)
        assert sum(f.stat().st_size for f in files.dir.iterdir()) <= 20_000
        files.save(pictures[-1], f"pic:{len(pictures) - 1}")  # a hit refreshes its place
    finally:
        files.cleanup()


def test_warming_stops_at_half_the_byte_budget(tmp_path):
    import numpy as np
    from PIL import Image

    from demo.thumbs import ImageFiles

    rng = np.random.default_rng(1)
    paths = []
    for i in range(20):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (120, 40, 3), dtype=np.uint8)).save(paths[-1])
    files = ImageFiles(max_bytes=40_000)
    try:
        files.warm(paths).join(timeout=30)
        made = list(files.dir.glob("*.jpg"))
        assert 1 <= len(made) < len(paths) and files.bytes_used() < 40_000
        assert files.bytes_used() - max(f.stat().st_size for f in made) < 20_000  # stopped once past half
        assert len(made) == len(list(files.dir.iterdir()))  # nothing evicted by the warming itself
    finally:
        files.cleanup()
