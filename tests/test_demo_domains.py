"""The Search view's gallery picker: each ToyPEDES domain's test split, generated on its first pick.

The app's own handlers (``build_app``'s event functions, by api_name) on an engine with the embedded
model; the domain galleries are ToyPEDES ``tiny`` (never ``regime``) in a temporary cache.
"""

from __future__ import annotations

import json

import pytest

import demo.gallery as gallery_mod
import upperson.data.toypedes as toypedes_pkg
import upperson.data.toypedes.generate as generate_mod
from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, session_cache, toy_root
from upperson.data.toypedes.domains import DOMAINS


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture
def site(model, tmp_path, monkeypatch):
    """(app, engine, generation calls, cache folder): a fresh app whose domain galleries are ``tiny``."""
    from demo.app import build_app
    from demo.gallery import dataset_gallery

    default = dataset_gallery("toypedes", toy_root(), "test")  # generated (once per session) before counting
    cache = tmp_path / "cache"
    monkeypatch.setenv("UPPERSON_CACHE", str(cache))
    monkeypatch.setattr(gallery_mod, "DOMAIN_PRESET", "tiny")
    calls: list[str] = []
    real = toypedes_pkg.generate_toypedes

    def counted(*args, **kwargs):
        calls.append(kwargs.get("domain"))
        return real(*args, **kwargs)

    monkeypatch.setattr(toypedes_pkg, "generate_toypedes", counted)
    # features go to the shared session cache (the model's, as the other demo tests); data to `cache`
    engine = make_engine(model, default)
    assert engine.cache_dir == session_cache()
    return build_app(engine), engine, calls, cache


def handler(app, api_name: str):
    return next(f.fn for f in app.fns.values() if f.api_name == api_name)


def component(app, elem_id: str):
    return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_each_domain_is_offered_with_its_label_and_the_default_stays_the_original_split(site):
    app, engine, calls, _ = site
    choices = dict((value, label) for label, value in component(app, "gallery-pick").choices)
    assert set(choices) == {gallery_mod.DEFAULT_CHOICE, *DOMAINS}
    assert choices["cuhk"] == "ToyPEDES cuhk (campus, daylight)"
    assert choices["icfg"] == "ToyPEDES icfg (indoor, winter)"
    assert choices["rstp"] == "ToyPEDES rstp (street, night)"
    assert component(app, "gallery-pick").value == gallery_mod.DEFAULT_CHOICE
    assert calls == []  # nothing is generated before a pick
    # the default gallery here: the --data-root's split (the original ToyPEDES, no domain), whatever the card's
    meta = json.loads((toy_root() / "ToyPEDES" / "meta.json").read_text())
    assert "domain" not in meta and engine.gallery.name == "ToyPEDES test"


def test_picking_a_domain_generates_it_once_and_shows_its_images(site, model):
    from demo.app import example_queries
    from demo.context import VisitorState
    from demo.search import SearchEngine

    app, engine, calls, cache = site
    pick, state = handler(app, "pick_gallery"), VisitorState(engine.default_gallery, engine.default_checkpoint)
    message, header, s = pick("rstp", state)
    assert calls == ["rstp"] and "⚠️" not in message
    gi = engine.gallery_index(s.gallery)
    root = gallery_mod.domain_root("rstp")
    meta = json.loads((root / "ToyPEDES" / "meta.json").read_text())
    assert (meta["domain"], meta["preset"], meta["splits"]) == ("rstp", "tiny", ["test"])
    assert cache in root.parents
    # the gallery's images are the domain's test images: the annotation file's, every one
    annotations = json.loads((root / "ToyPEDES" / "reid_raw.json").read_text())
    expected = sorted((root / "ToyPEDES" / "imgs" / a["file_path"]).resolve() for a in annotations)
    assert sorted(it.path for it in gi.gallery.items) == expected
    attributes = json.loads((root / "ToyPEDES" / "attributes.json").read_text())["identities"]
    assert {attributes[str(it.pid)]["domain"] for it in gi.gallery.items} == {"rstp"}
    # the header (person ids) and the examples follow the picked gallery
    assert f"{meta['counts']['test']['ids']} identities" in header and "rstp" in header
    examples = handler(app, "examples")(s)
    assert examples["queries"] if isinstance(examples, dict) else examples
    assert example_queries(gi.gallery)[0][0] in gi.gallery.items[0].captions
    # a second pick (same process): no generation, same snapshot
    _, _, s2 = pick("rstp", state)
    assert calls == ["rstp"] and s2.gallery == s.gallery and engine.gallery_index(s2.gallery) is gi
    # a restart: the cached copy is verified and reused, not written again
    stamp = (root / "ToyPEDES" / "reid_raw.json").stat().st_mtime_ns
    fresh = SearchEngine(model, engine.gallery, cache_dir=engine.cache_dir, progress=False, query_threads=1)
    from demo.app import build_app
    handler(build_app(fresh), "pick_gallery")("rstp", state)
    assert (root / "ToyPEDES" / "reid_raw.json").stat().st_mtime_ns == stamp
    # back to the default
    _, _, s3 = pick(gallery_mod.DEFAULT_CHOICE, s)
    assert s3.gallery == engine.default_gallery


def test_a_failed_generation_is_one_message_and_leaves_no_folder(site, monkeypatch):
    from demo.context import VisitorState

    app, engine, calls, cache = site

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    write_manifest = generate_mod._write_manifest
    monkeypatch.setattr(generate_mod, "_write_manifest", disk_full)  # after every image is written
    state = VisitorState(engine.default_gallery, engine.default_checkpoint)
    message, header, s = handler(app, "pick_gallery")("icfg", state)  # returns: no exception, no Error badge
    assert calls == ["icfg"]
    assert message.startswith("⚠️") and "No space left on device" in message and "pick it again" in message
    assert message.count("\n") == 0 and s == state
    root = gallery_mod.domain_root("icfg")
    assert list(root.iterdir()) == []  # no half-written dataset, no temporary folder
    assert "domain:icfg" not in engine.galleries and not gallery_mod.domain_ready("icfg")
    # once the disk has room again, the next pick generates it
    monkeypatch.setattr(generate_mod, "_write_manifest", write_manifest)
    message, _, s = handler(app, "pick_gallery")("icfg", state)
    assert calls == ["icfg", "icfg"] and "⚠️" not in message and s.gallery == "domain:icfg"
