"""The app as a researcher's instrument (issue 21): every number says what it is, no dead ends.

Search by image, the way back to the default gallery, the examples of the gallery in view, top-k
checks and the person-id line. Expected rankings are computed directly with the model
(tests.test_demo_support), never taken from the demo's own code.
"""

from __future__ import annotations

import pytest
import torch

from demo.markup import text
from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import image_features, load_model, start, toy_root, use_session_cache

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(engine, client, model, gallery paths, allowed folder holding two images) on ToyPEDES tiny test."""
    use_session_cache()
    from gradio_client import Client
    from PIL import Image

    from demo.gallery import dataset_gallery

    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "mine").mkdir()
    model = load_model()
    gallery = dataset_gallery("toypedes", toy_root(), "test")
    for i in range(2):
        Image.open(gallery.items[i].path).save(allowed / "mine" / f"person{i}.png")
    engine = make_engine(model, gallery)
    app, url = start(engine, allow_roots=[allowed])
    client = Client(url + "/", verbose=False)
    try:
        yield engine, client, model, [it.path for it in engine.gallery.items], allowed
    finally:
        client.close()
        app.close()


def _table(out):
    return out[3]


def test_top_k_below_one_is_refused_not_silently_one(served):
    from demo.search import QueryError

    engine, client, *_ = served
    caption = engine.gallery.items[0].captions[0]
    with pytest.raises(QueryError, match="at least 1"):
        engine.search(caption, 0)
    out = client.predict(caption, "", 0, False, api_name="/search")
    assert "1 to 200" in out[2] and "error" in _table(out)


def test_person_id_line_says_what_each_number_is(served):
    engine, client, _, paths, _ = served
    item = engine.gallery.items[3]
    out = client.predict(item.captions[0], "", 10, False, api_name="/search")
    status, table = out[2], _table(out)
    m = table["rankings"][0]["metrics"]
    n = len(paths)
    assert m["gallery"] == n
    assert f"R@1 **{m['R1']:.0f}%**" in status and f"AP **{m['AP']:.1f}%**" in status
    assert f"rank **{m['first_match']}** of {n}" in status
    assert "average precision" in status and engine.gallery.name in status and "one query" in status


def _reference_by_image(model, paths, pids, q: int):
    feats = image_features(model, paths)
    sim = feats @ feats[q]
    sim[q] = -float("inf")
    order = torch.sort(sim, descending=True, stable=True).indices[: len(paths) - 1]
    return order.tolist(), sim[order].tolist()


def test_find_this_person_ranks_by_the_images_feature_without_itself(served):
    engine, client, model, paths, _ = served
    q = 4
    name = engine.gallery.relative_name(engine.gallery.items[q])
    out = client.predict(name, len(paths), False, api_name="/find_person")
    table = _table(out)
    hits = table["rankings"][0]["hits"]
    ref_idx, ref_scores = _reference_by_image(model, paths, None, q)
    assert [h["file"] for h in hits] == [engine.gallery.relative_name(engine.gallery.items[i]) for i in ref_idx]
    torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), torch.tensor(ref_scores), atol=1e-5, rtol=0)
    pid = engine.gallery.items[q].pid
    assert table["target_pid"] == pid
    assert all(h["relevant"] == (h["pid"] == pid) for h in hits)
    assert text(name) in out[2] and "left out" in out[2]


def test_search_by_uploaded_image_finds_that_image_first(served):
    from gradio_client import handle_file

    engine, client, model, paths, _ = served
    q = 6
    out = client.predict(handle_file(str(paths[q])), 5, False, api_name="/search_image")
    hits = _table(out)["rankings"][0]["hits"]
    feats = image_features(model, paths)
    ref = torch.sort(feats @ feats[q], descending=True, stable=True).indices[:5].tolist()
    assert [h["file"] for h in hits] == [engine.gallery.relative_name(engine.gallery.items[i]) for i in ref]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "uploaded image" in out[2]


def test_search_by_image_without_an_image_says_what_to_do(served):
    _, client, *_ = served
    out = client.predict(None, 5, False, api_name="/search_image")
    assert "Upload an image" in out[2] and "error" in _table(out)


def test_examples_follow_the_gallery_and_there_is_a_way_back(served):
    from demo.app import example_queries

    engine, client, _, _, allowed = served
    captions = [c for it in engine.gallery.items for c in it.captions[:1]][:8]
    assert example_queries(engine.gallery)[0] == captions
    folder_examples, label = example_queries(engine.gallery_index(engine.default_gallery).gallery.restricted_to([]))
    assert folder_examples and "no captions" in label and not set(folder_examples) & set(captions)

    admin, header = client.predict("mine", api_name="/set_gallery")
    assert "2 images" in header and "Indexed" in admin
    assert client.predict(api_name="/examples") == {"label": label, "queries": folder_examples}
    out = client.predict("a person", "", 5, False, api_name="/search")
    assert sorted(h["file"] for h in _table(out)["rankings"][0]["hits"]) == ["person0.png", "person1.png"]
    admin, header = client.predict(api_name="/reset_gallery")
    assert engine.gallery.name in header and "Back on" in admin
    assert client.predict(api_name="/examples")["queries"] == captions
    assert client.predict(api_name="/info")["gallery"] == engine.gallery.name
