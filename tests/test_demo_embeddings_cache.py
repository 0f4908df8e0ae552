"""Embedding maps kept in the cache folder across restarts (issue 21): a second app on the same cache
reads the map instead of computing it; a damaged or stale file is computed again, never misread."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from analysis.embeddings import SplitEmbeddings
from analysis.umap_plot import MapPanel
from demo import embeddings_store as store
from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, toy_root, use_session_cache


def _fake_map_panel(calls: list):
    """A stand-in for UMAP (the real one is tested in test_demo_views; here only keeping it matters):
    coordinates and scores that are a function of the embeddings, so a recomputed map equals the first."""
    def panel(label, emb, seed):
        calls.append(label)
        x = torch.cat([emb.image_features, emb.text_features]).numpy()
        return MapPanel(label, emb, x[:, :2].astype(np.float64) * (seed + 1), {"R1": float(x[0, 0]), "silhouette": math.nan})
    return panel


def _same_map(a, b) -> None:
    assert a.pids == b.pids and a.items == b.items
    for p, q in zip(a.panels, b.panels, strict=True):
        assert p.label == q.label and np.array_equal(p.xy.astype(np.float32), q.xy.astype(np.float32))
        assert p.scores["R1"] == pytest.approx(q.scores["R1"]) and math.isnan(q.scores["silhouette"])
        assert torch.equal(p.emb.image_features, q.emb.image_features)
        assert np.array_equal(p.emb.text_image, q.emb.text_image)


def test_a_restarted_app_reads_the_map_and_a_damaged_file_is_computed_again(tmp_path, monkeypatch, caplog):
    use_session_cache()
    from demo.context import DemoContext
    from demo.gallery import dataset_gallery
    from demo.views import embeddings_view as view

    monkeypatch.setattr(view, "MAP_FOLDER", tmp_path / "maps")  # absolute: the engine's cache_dir / it is it
    model = load_model()
    gallery = dataset_gallery("toypedes", toy_root(), "test")
    calls: list = []
    monkeypatch.setattr(view, "map_panel", _fake_map_panel(calls))
    _, first = view.compute_map(DemoContext(make_engine(model, gallery)), None, 3)
    assert len(calls) == 2 and not first.from_disk  # two panels, computed
    files = list((tmp_path / "maps").glob("*.safetensors"))
    assert len(files) == 1

    # a restart: a new engine and context on the same cache folder read the map, computing nothing
    ctx2 = DemoContext(make_engine(model, gallery))
    _, second = view.compute_map(ctx2, None, 3)
    assert len(calls) == 2 and second.from_disk and "read from the cache" in view.summary(second)
    _same_map(first, second)
    assert second.seconds == pytest.approx(first.seconds)

    # another N is another file (not the stored one misread)
    assert view.stored_map_key(ctx2, ctx2.new_state(), ctx2.gallery_index(None), [], 3, ["a"]) != \
        view.stored_map_key(ctx2, ctx2.new_state(), ctx2.gallery_index(None), [], 4, ["a"])

    # a byte of the payload changed: refused (WARNING), computed again, and the file rewritten good
    data = bytearray(files[0].read_bytes())
    data[-5] ^= 0x40
    files[0].write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="demo.embeddings_store"):
        _, third = view.compute_map(DemoContext(make_engine(model, gallery)), None, 3)
    assert len(calls) == 4 and not third.from_disk
    assert "checksum mismatch" in caplog.text and "computing it again" in caplog.text
    _same_map(first, third)
    assert store.read_map(files[0], files[0].stem).items == first.items


def _stored(n_img: int = 4, seed: int = 0) -> store.StoredMap:
    rng = np.random.default_rng(seed)
    pids = np.array([1, 1, 2, 2][:n_img])
    panels = []
    for label in ("Zero-shot backbone", "UP-Person"):
        img = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n_img, 8)).astype(np.float32)), dim=1)
        txt = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n_img, 8)).astype(np.float32)), dim=1)
        emb = SplitEmbeddings(img, pids, txt, pids.copy(), np.arange(n_img), 0)
        panels.append(MapPanel(label, emb, rng.normal(size=(2 * n_img, 2)), {"R1": 50.0, "silhouette": math.nan}))
    return store.StoredMap(panels, {1: [0, 1], 2: [5, 7]}, 1.5)


def _rewrite(path, tensors=None, meta=None) -> None:
    """The file with some tensors or metadata replaced (the checksum kept, unless given)."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), "pt") as f:
        old_meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    state.update(tensors or {})
    path.write_bytes(save(state, metadata={**old_meta, **(meta or {})}))


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), ""),
    (lambda p: p.write_bytes(b"\x00" * 3), "shorter than a safetensors header"),
    (lambda p: _rewrite(p, meta={"key": "0" * 64}), "written for other inputs"),
    (lambda p: _rewrite(p, meta={"version": "9"}), "version '9'"),
    (lambda p: _rewrite(p, {"p0.xy": torch.zeros(8, 2)}), "checksum mismatch"),
    (lambda p: _rewrite(p, {"p1.text_pids": torch.zeros(4, dtype=torch.int32)}), "checksum mismatch"),
], ids=["truncated", "tiny", "other-key", "other-version", "changed-values", "changed-dtype"])
def test_a_damaged_map_file_is_refused_with_a_warning(tmp_path, caplog, damage, match):
    key = store.map_key({"n": 2})
    path = store.save_map(tmp_path, key, _stored())
    got = store.read_map(path, key)  # the round trip
    assert got.items == {1: [0, 1], 2: [5, 7]} and got.seconds == 1.5 and math.isnan(got.panels[0].scores["silhouette"])
    assert np.allclose(got.panels[1].xy, _stored().panels[1].xy.astype(np.float32))
    damage(path)
    with caplog.at_level(logging.WARNING, logger="demo.embeddings_store"):
        assert store.load_map(tmp_path, key) is None
    assert "computing it again" in caplog.text and match in caplog.text


def test_a_map_file_is_checked_beyond_its_checksum(tmp_path):
    """Values written with a matching checksum (by save_map itself) are still checked."""
    key = store.map_key({"n": 2})
    bad = _stored()
    bad.panels[0].xy[3, 1] = math.inf
    path = store.save_map(tmp_path, key, bad)
    with pytest.raises(store.MapFileError, match="expected finite float32"):
        store.read_map(path, key)
    bad = _stored()
    bad.panels[1].emb.text_image[2] = 9
    store.save_map(tmp_path, key, bad)
    with pytest.raises(store.MapFileError, match="a caption points at no image"):
        store.read_map(path, key)
    bad = _stored()
    bad.items = {1: [0, 1], 3: [5]}
    store.save_map(tmp_path, key, bad)
    with pytest.raises(store.MapFileError, match="identities of the panels and of the rows differ"):
        store.read_map(path, key)
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    with pytest.raises(store.MapFileError, match="symbolic link"):
        store.read_map(link, key)


@pytest.fixture(scope="module")
def built():
    """(engine, app, its config, component id by elem_id) of one built (not launched) app."""
    use_session_cache()
    from demo.app import build_app
    from demo.gallery import dataset_gallery

    engine = make_engine(load_model(), dataset_gallery("toypedes", toy_root(), "test"))
    app = build_app(engine)
    config = app.get_config_file()
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    return engine, app, config, ids


VIEW = ("embeddings-plot", "embeddings-identity", "embeddings-images", "embeddings-captions", "embeddings-info")


def test_a_gallery_or_model_switch_clears_the_shown_map_and_says_so(built):
    """Beyond the list (issue 21): after a switch the old gallery's map stayed on screen under a cleared
    identity list. Every output of the view is cleared on the state change, the info line says what to do."""
    _, app, config, ids = built
    view = {ids[e] for e in VIEW}
    state_ids = {c["id"] for c in config["components"] if c.get("type") == "state"}
    on_switch = [d for d in config["dependencies"]
                 if any(t[0] in state_ids and t[1] == "change" for t in d["targets"]) and set(d["outputs"]) & view]
    assert len(on_switch) == 1 and set(on_switch[0]["outputs"]) == view
    assert on_switch[0]["inputs"] == [ids["embeddings-plot"]]
    out = dict(zip(on_switch[0]["outputs"], app.fns[on_switch[0]["id"]].fn("/tmp/a-map.png")))
    assert out[ids["embeddings-plot"]] is None and out[ids["embeddings-images"]] == []
    assert "Show the map" in out[ids["embeddings-info"]]
    nothing_shown = dict(zip(on_switch[0]["outputs"], app.fns[on_switch[0]["id"]].fn(None)))
    assert nothing_shown[ids["embeddings-info"]] == ""  # no map was shown: nothing to explain


def test_a_folder_gallery_gets_one_message_in_the_embeddings_view(built, tmp_path):
    """The page's *Show the map* on a folder (no identities): one message in the info line, every other
    output empty, and no exception (an exception is Gradio's red "Error" badge on every panel)."""
    import shutil

    from demo.context import VisitorState
    from demo.gallery import folder_gallery

    engine, app, config, ids = built
    for p in sorted((toy_root() / "ToyPEDES" / "imgs").rglob("*.png"))[:3]:
        shutil.copy(p, tmp_path / p.name)
    key = engine.add_gallery(folder_gallery(tmp_path)).key
    click = [d for d in config["dependencies"] if any(t == (ids["embeddings-run"], "click") for t in d["targets"])]
    assert len(click) == 1
    out = dict(zip(click[0]["outputs"], app.fns[click[0]["id"]].fn(20, None, VisitorState(key, engine.default_checkpoint))))
    assert "no identities" in out[ids["embeddings-info"]] and "load a dataset gallery" in out[ids["embeddings-info"]]
    assert all(out[ids[e]] is None for e in VIEW if e != "embeddings-info")
