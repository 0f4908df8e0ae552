"""The app as a researcher's instrument (issue 21): every number says what it is, no dead ends.

Search by image, the way back to the default gallery, the examples of the gallery in view, top-k
checks and the person-id line. Expected rankings are computed directly with the model
(tests.test_demo_support), never taken from the demo's own code.
"""

from __future__ import annotations

import re

import pytest
import torch

from analysis import ablation
from demo.markup import text
from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import image_features, load_model, session_cache, start, toy_root, use_session_cache
from upperson import stats

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


# ----------------------------------------------------------------------------- the training vocabulary
def test_training_stores_the_vocabulary_of_its_captions_with_the_best_checkpoint(tmp_path, toypedes_root):
    from upperson.config import load_config
    from upperson.data import load_dataset
    from upperson.model.checkpoint import load_model
    from upperson.train import train
    from upperson.vocab import checkpoint_vocabulary

    cfg = load_config("toypedes", [f"data.root={toypedes_root}", "train.epochs=0", "model.image_size=[48, 16]",
                                   "data.eval_batch_size=64"])
    train(cfg, tmp_path / "run", progress=False)
    captions = [c for r in load_dataset("toypedes", toypedes_root).split("train") for c in r.captions]
    vocab = checkpoint_vocabulary(tmp_path / "run" / "best")
    assert vocab is not None and vocab.captions == len(captions)
    assert vocab.words == {w.lower() for c in captions for w in re.findall("[A-Za-z]+", c)}  # ASCII captions
    load_model(tmp_path / "run" / "best")  # its SHA-256 is bound and checked on load


def test_a_sidecar_added_later_keeps_the_tensors_and_a_changed_one_is_refused(tmp_path, tiny_cfg):
    from safetensors.torch import load_file

    from upperson.model import build_model
    from upperson.model.checkpoint import add_sidecars, load_model, save_petl
    from upperson.vocab import VocabularyError, build_vocabulary, checkpoint_vocabulary, write_vocabulary

    ckpt = save_petl(build_model(tiny_cfg), tmp_path / "ckpt")
    assert checkpoint_vocabulary(ckpt) is None  # an old checkpoint: no vocabulary, no notice
    before = load_file(str(ckpt / "petl.safetensors"))
    vocab = build_vocabulary(["A man in a red coat.", "A woman; blue T-shirt"])
    add_sidecars(ckpt, {"vocab.json": write_vocabulary(vocab, tmp_path / "v.json")})
    after = load_file(str(ckpt / "petl.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert checkpoint_vocabulary(ckpt) == vocab and vocab.words >= {"t", "shirt", "woman"}
    load_model(ckpt, pretrained=None)
    (ckpt / "vocab.json").write_text((ckpt / "vocab.json").read_text().replace("woman", "women"))
    with pytest.raises(VocabularyError, match="was changed"):
        checkpoint_vocabulary(ckpt)


def test_a_query_of_mostly_unknown_words_gets_a_notice_with_the_fraction(served):
    from upperson.vocab import KNOWN_THRESHOLD, build_vocabulary

    engine, *_ = served
    name = engine.default_checkpoint
    captions = [c for it in engine.gallery.items for c in it.captions]
    vocab = build_vocabulary(captions)
    try:
        engine.vocabularies[name] = vocab
        assert not engine.search(captions[0], 3).notices
        for query, known, total in [("一个穿红色外套的女人", 0, 1), ("zorblax quimble man", 1, 3),
                                    ("the man in a florbish coat", 5, 6)]:
            assert vocab.coverage(query) == (known, total)
            notices = engine.search(query, 3).notices
            if known / total < KNOWN_THRESHOLD:
                assert any(f"Only {known} of the description's {total} words" in n and "50%" in n for n in notices)
            else:
                assert not notices
        assert any("no words" in n for n in engine.search("1234 !!", 3).notices)
    finally:
        engine.vocabularies.pop(name, None)
    assert not engine.search("一个穿红色外套的女人", 3).notices  # no stored vocabulary: no notice


def test_the_shipped_checkpoint_has_the_vocabulary_of_its_training_captions():
    from demo.__main__ import default_vocabulary
    from upperson.embedded import embedded_available, read_card

    if not embedded_available():
        pytest.skip("no shipped embedded model in this checkout")
    vocab = default_vocabulary([])
    assert vocab is not None and vocab.captions == read_card()["toypedes"]["counts"]["train"]["captions"]
    assert {"man", "woman", "coat", "backpack"} <= vocab.words and vocab.coverage("一个穿红色外套的女人") == (0, 1)


def test_a_bad_second_checkpoint_is_refused_at_start(tmp_path, served):
    from demo.search import SearchEngine
    from upperson.model.checkpoint import save_petl

    engine, _, model, _, _ = served
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "no-such", tmp_path / "empty"):
        with pytest.raises(ValueError, match=f"--checkpoint {bad}: cannot be switched to"):
            SearchEngine(model, engine.gallery, cache_dir=tmp_path / "cache", checkpoints={"b": bad})
    good = save_petl(model, tmp_path / "good")
    SearchEngine(model, engine.gallery, cache_dir=session_cache(), checkpoints={"good": good}, progress=False)
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(before[n], after[n]) for n in before)  # the default's weights are back


def test_ablation_says_its_split_and_queries_and_shows_no_temp_paths(served):
    from demo.views.ablation_view import portable_command, shipped_folder
    from upperson.embedded import read_card

    _, client, *_ = served
    assert portable_command("python -m analysis ablation --run --data-root /tmp/h12/small --runs-dir=/tmp/s/runs "
                            "--out assets/ablation") == ("python -m analysis ablation --run --data-root DATA_ROOT "
                                                         "--runs-dir=RUNS_DIR --out assets/ablation")
    out = client.predict("", "R1", api_name="/ablation")
    command, info = out[4], out[5]
    assert "/tmp/" not in command and "DATA_ROOT" in command and "python -m analysis ablation" in command
    queries = stats.read_per_query_csv(ablation.per_query_in(shipped_folder() / "per_query")["zero-shot"][0]).num_queries
    card = read_card()["metrics"]["zero-shot"]
    assert "**test** split" in info and f"({queries:,} queries)" in info
    assert f"{card['queries']:,} queries" in info and f"{card['R1']:.2f}" in info
