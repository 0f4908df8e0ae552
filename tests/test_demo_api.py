"""The demo end to end through gradio_client: search, compare, metrics, explain, bad input, load.

Every expected answer is computed directly with the model (tests.test_demo_support), never
taken from the demo's own code.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import (
    load_model, reference_ranking, session_cache, start, toy_root, use_session_cache, zero_shot_of,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def served():
    """(engine, app url, gradio client, model, gallery paths) on the tiny ToyPEDES test split."""
    use_session_cache()
    from gradio_client import Client

    from demo.gallery import dataset_gallery

    model = load_model()
    gallery = dataset_gallery("toypedes", toy_root(), "test")
    engine = make_engine(model, gallery)
    app, url = start(engine)
    client = Client(url + "/", verbose=False)
    try:
        yield engine, url, client, model, [it.path for it in engine.gallery.items]
    finally:
        client.close()
        app.close()


def _search(client, query, *, pid="", k=20, compare=False):
    main, zs, status, table = client.predict(query, pid, k, compare, api_name="/search")
    if isinstance(zs, dict):  # a component update (value and visibility)
        zs = zs["value"]
    return main, zs, status, table


def _files(served, hits):
    engine, *_ = served
    return [engine.gallery.items[engine._by_name[h["file"]]].path for h in hits]


def test_search_returns_k_ranked_images_like_the_model(served):
    engine, _, client, model, paths = served
    record = engine.gallery.items[5]
    caption = record.captions[0]
    k = 10
    main, zs, status, table = _search(client, caption, k=k)
    hits = table["rankings"][0]["hits"]
    assert len(main) == k and len(hits) == k
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert [h["rank"] for h in hits] == list(range(1, k + 1))
    assert all(Path(g["image"]).exists() for g in main)
    assert all(f"#{h['rank']}" in g["caption"] for g, h in zip(main, hits))

    ref_idx, ref_scores = reference_ranking(model, paths, caption, k)
    assert _files(served, hits) == [paths[i] for i in ref_idx]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(ref_scores), atol=1e-5, rtol=0)

    from upperson.embedded import embedded_available

    if embedded_available():  # the trained model: its true identity is among the first results
        assert record.pid in [h["pid"] for h in hits]
    else:  # a random model: with k = gallery size every identity is there, in the model's order
        _, _, _, full = _search(client, caption, k=len(paths))
        assert record.pid in [h["pid"] for h in full["rankings"][0]["hits"]]
        assert len(full["rankings"][0]["hits"]) == len(paths)


def test_caption_query_marks_identity_and_reports_r1_and_ap(served):
    from upperson.metrics import retrieval_metrics

    engine, _, client, model, paths = served
    record = engine.gallery.items[7]
    main, _, status, table = _search(client, record.captions[1], k=len(paths))
    assert table["target_pid"] == record.pid
    ranking = table["rankings"][0]
    assert all(h["relevant"] == (h["pid"] == record.pid) for h in ranking["hits"])
    assert all(g["caption"].startswith("✓" if h["relevant"] else "✗") for g, h in zip(main, ranking["hits"]))

    from tests.test_demo_support import image_features, text_feature

    sim = (image_features(model, paths) @ text_feature(model, record.captions[1])).unsqueeze(0)
    gp = torch.tensor([engine.gallery.items[i].pid for i in range(len(paths))])
    ref = retrieval_metrics(sim, torch.tensor([record.pid]), gp)
    assert ranking["metrics"]["R1"] == pytest.approx(ref["R1"])
    assert ranking["metrics"]["AP"] == pytest.approx(ref["mAP"])
    assert f"{ref['mAP']:.1f}" in status and f"Identity {record.pid}" in status


def test_user_given_identity_and_free_text(served):
    engine, _, client, model, paths = served
    pid = engine.gallery.items[0].pid
    _, _, status, table = _search(client, "a person with a bag", pid=str(pid), k=len(paths))
    assert table["target_pid"] == pid
    assert all(h["relevant"] == (h["pid"] == pid) for h in table["rankings"][0]["hits"])
    # free text and no id: nothing is marked, no metrics
    _, _, status, table = _search(client, "a person with a bag", k=5)
    assert table["target_pid"] is None and table["rankings"][0]["metrics"] is None
    assert all(h["relevant"] is None for h in table["rankings"][0]["hits"])
    # an id that is not in the gallery is ignored with a notice
    _, _, status, table = _search(client, "a person", pid="999999", k=5)
    assert table["target_pid"] is None and "999999" in status


def test_compare_mode_ranks_with_both_models(served):
    engine, _, client, model, paths = served
    caption = engine.gallery.items[2].captions[0]
    k = 8
    main, zs, status, table = _search(client, caption, k=k, compare=True)
    assert [r["model"] for r in table["rankings"]] == ["UP-Person", "zero-shot CLIP"]
    assert len(main) == k and len(zs) == k
    ref_zs, _ = reference_ranking(zero_shot_of(model), paths, caption, k)
    assert _files(served, table["rankings"][1]["hits"]) == [paths[i] for i in ref_zs]
    ref_up, _ = reference_ranking(model, paths, caption, k)
    assert _files(served, table["rankings"][0]["hits"]) == [paths[i] for i in ref_up]


@pytest.mark.parametrize("query", ["", "   \t\n  "])
def test_empty_query_gets_a_friendly_message(served, query):
    _, _, client, _, _ = served
    main, zs, status, table = _search(client, query)
    assert main == [] and "Type a description" in status and "error" in table


def test_a_query_of_control_characters_only_says_so(served):
    """Not "type a description" to someone who typed something: what was removed, and what to do."""
    _, _, client, _, _ = served
    main, _, status, table = _search(client, "\x00\x07\x1b\u200b")
    assert main == [] and "no printable character" in status and "4 control" in status and "error" in table


def test_overlong_query_is_truncated_with_a_notice(served):
    engine, _, client, model, paths = served
    long = " ".join(["a tall woman wearing a long red coat and black boots"] * 20)
    _, _, status, table = _search(client, long, k=len(paths))
    assert "reads the first 75" in status
    ref_idx, _ = reference_ranking(model, paths, long)  # the tokenizer truncates at 77 the same way
    assert _files(served, table["rankings"][0]["hits"]) == [paths[i] for i in ref_idx]


@pytest.mark.parametrize("query", ["一个穿红色外套的女人", "a man 👨‍🦰 with a 🎒 backpack", "Ünïcödé façade — naïve",
                                   "\u200b\u202e zero width and bidi", "<script>alert(1)</script>"])
def test_any_unicode_is_searched(served, query):
    _, _, client, model, paths = served
    main, _, status, table = _search(client, query, k=len(paths))
    assert len(main) == len(paths)
    ref_idx, _ = reference_ranking(model, paths, "".join(c for c in query if c.isprintable() or c.isspace()))
    assert _files(served, table["rankings"][0]["hits"]) == [paths[i] for i in ref_idx]


def test_twenty_concurrent_queries_get_their_own_answers(served):
    engine, url, client, model, paths = served
    captions = [c for it in engine.gallery.items for c in it.captions][:20]
    assert len(captions) == 20
    from tests.test_demo_support import image_features, text_feature

    feats = image_features(model, paths)
    expected = {c: [paths[i] for i in torch.sort(feats @ text_feature(model, c), descending=True, stable=True)
                    .indices[:5].tolist()] for c in captions}

    # twenty jobs in flight at once (each submit is its own queued request); the answers are
    # checked from the JSON, so the images are not downloaded
    from gradio_client import Client

    client = Client(url + "/", verbose=False, download_files=False)
    jobs = [(c, client.submit(c, "", 5, False, api_name="/search")) for c in captions]
    answers = [(c, job.result(timeout=120)[3]) for c, job in jobs]
    client.close()
    for caption, table in answers:
        assert table["query"] == " ".join(caption.split())
        assert _files(served, table["rankings"][0]["hits"]) == expected[caption]


def test_explain_shows_heatmap_and_captions(served):
    engine, _, client, model, _ = served
    item = engine.gallery.items[4]
    name = engine.gallery.relative_name(item)
    image, text = client.predict(name, api_name="/explain")
    assert image is not None and Path(image).exists()
    assert item.captions[0] in text and f"id {item.pid}" in text

    from PIL import Image

    from demo.heatmap import prefix_attention_map
    from upperson.data import build_transforms

    heat = prefix_attention_map(model, build_transforms(model.image_size, train=False)(Image.open(item.path).convert("RGB")))
    gh, gw = model.clip.visual.grid_size
    assert heat.shape == (gh, gw) and (heat > 0).all()
    assert f"{heat.min():.3g}" in text


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../etc/passwd", "imgs/../../../etc/passwd", "#99999", ""])
def test_explain_refuses_anything_outside_the_gallery(served, name):
    _, _, client, _, _ = served
    image, text = client.predict(name, api_name="/explain")
    assert image is None and "not an image of the current gallery" in text


def test_files_outside_the_gallery_cannot_be_fetched(served):
    engine, url, client, *_ = served
    main, *_ = client.predict(engine.gallery.items[0].captions[0], "", 2, False, api_name="/search")
    assert len(main) == 2 and all(Path(g["image"]).stat().st_size > 0 for g in main)  # the route serves what it made
    # the original gallery image too: the app shows its thumbnail, never the file (tests/test_security_serve.py)
    outside = [Path("/etc/passwd"), Path(__file__).resolve(), Path(toy_root()) / "ToyPEDES" / "reid_raw.json",
               session_cache(), engine.gallery.items[0].path]
    with httpx.Client(timeout=10) as http:
        for path in outside:
            for route in ("/file=", "/gradio_api/file="):
                r = http.get(f"{url}{route}{path}")
                assert r.status_code != 200 or b"root:" not in r.content, (route, path)
                assert r.status_code in (403, 404), (route, path, r.status_code)


def test_gallery_folder_bad_files_and_outside_folders(tmp_path):
    """A folder gallery chosen through the API: bad files skipped and named; outside folders refused."""
    use_session_cache()
    from gradio_client import Client
    from PIL import Image

    from demo.gallery import dataset_gallery, folder_gallery

    allowed = tmp_path / "allowed"
    photos = allowed / "photos"
    photos.mkdir(parents=True)
    src = [it.path for it in dataset_gallery("toypedes", toy_root(), "test").items[:6]]
    good = []
    for i, p in enumerate(src):
        good.append(photos / f"p{i}.png")
        Image.open(p).save(good[-1])
    (photos / "readme.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photos / "half.png").write_bytes(good[0].read_bytes()[:100])
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.open(src[0]).save(secret / "s.png")
    (photos / "link.png").symlink_to(secret / "s.png")

    model = load_model()
    engine = make_engine(model, folder_gallery(photos))
    assert sorted(p.name for p, _ in engine.skipped) == ["broken.jpg", "half.png", "readme.txt"]
    assert [it.path for it in engine.gallery.items] == sorted(good)
    app, url = start(engine, allow_roots=[allowed])
    client = Client(url + "/", verbose=False)
    try:
        for bad in ["/etc", str(secret), "../secret", str(allowed / ".." / "secret"), "", "\x00"]:
            msg, _ = client.predict(bad, api_name="/set_gallery")
            assert msg.startswith("⚠️"), bad
        assert [it.path for it in engine.gallery.items] == sorted(good)
        msg, head = client.predict("photos", api_name="/set_gallery")
        assert "3 file(s) skipped" in msg and "readme.txt" in msg and "6 images" in msg
        info = client.predict(api_name="/info")
        assert info["images"] == 6 and len(info["skipped"]) == 3
        _, _, _, table = _search(client, "a woman in a red coat", k=10)
        hits = table["rankings"][0]["hits"]
        assert len(hits) == 6 and {h["file"] for h in hits} == {p.name for p in good}
        ref, _ = reference_ranking(model, sorted(good), "a woman in a red coat")
        assert [h["file"] for h in hits] == [sorted(good)[i].name for i in ref]
        with httpx.Client(timeout=10) as http:
            assert http.get(f"{url}/gradio_api/file={secret / 's.png'}").status_code in (403, 404)
    finally:
        client.close()
        app.close()


def test_switching_checkpoints_swaps_only_petl_weights(tmp_path, monkeypatch):
    use_session_cache()
    from gradio_client import Client

    import upperson.model as model_pkg
    from demo.gallery import dataset_gallery
    from upperson.index import model_key
    from upperson.model.checkpoint import save_petl

    model = load_model()
    paths = [it.path for it in dataset_gallery("toypedes", toy_root(), "test").items[:12]]
    gallery = dataset_gallery("toypedes", toy_root(), "test").restricted_to(paths)
    base_key = model_key(model)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():  # a second "checkpoint": other PETL weights on the same backbone
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    save_petl(model, tmp_path / "other")
    other_ref = reference_ranking(model, paths, "a man in a blue jacket")[0]
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(original[n])
    assert model_key(model) == base_key
    base_ref = reference_ranking(model, paths, "a man in a blue jacket")[0]
    assert other_ref != base_ref  # the test can tell the two apart

    engine = make_engine(model, gallery, checkpoints={"other": tmp_path / "other"})
    builds = []
    monkeypatch.setattr(model_pkg, "build_model", lambda *a, **k: builds.append(1))
    app, url = start(engine)
    client = Client(url + "/", verbose=False)
    try:
        def order():
            table = _search(client, "a man in a blue jacket", k=len(paths))[3]
            return [paths.index(engine.gallery.items[engine._by_name[h["file"]]].path)
                    for h in table["rankings"][0]["hits"]]

        assert order() == base_ref
        msg, head = client.predict("other", api_name="/set_model")
        assert "Loaded" in msg and "other" in head
        assert engine.model is model and builds == []  # same backbone object, nothing rebuilt
        assert order() == other_ref
        # the choice is this visitor's: another client still ranks with the start-up weights
        second = Client(url + "/", verbose=False, download_files=False)
        try:
            table = second.predict("a man in a blue jacket", "", len(paths), False, api_name="/search")[3]
            assert [paths.index(engine.gallery.items[engine._by_name[h["file"]]].path)
                    for h in table["rankings"][0]["hits"]] == base_ref
            assert second.predict(api_name="/info")["checkpoint"] == "embedded"
        finally:
            second.close()
        assert order() == other_ref
        client.predict("embedded", api_name="/set_model")
        assert order() == base_ref and model_key(model) == base_key
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="not in the list of choices"):
            client.predict("nope", api_name="/set_model")
        assert order() == base_ref
    finally:
        client.close()
        app.close()


# ----------------------------------------------------------------------------- bad input, per API name
HUGE_PID = "99999999999999999999999"


@pytest.mark.parametrize("pid", [HUGE_PID, "-3", "1.5", "nan", "inf", "abc", "<b>1</b>", "1e400"])
def test_bad_person_id_is_explained_and_the_search_still_runs(served, pid):
    _, _, client, _, _ = served
    main, _, status, table = _search(client, "a person with a bag", pid=pid, k=5)
    assert len(main) == 5 and table["target_pid"] is None
    assert "is not a person id" in status and "whole number" in status


@pytest.mark.parametrize("k", ["abc", None, 0, 201, 2.5, "nan", "", True, -1])
def test_bad_top_k_is_explained(served, k):
    _, _, client, _, _ = served
    main, _, status, table = _search(client, "a person with a bag", k=k)
    assert main == [] and "Top k must be a whole number from 1 to 200" in status
    assert "Top k" in table["error"]


@pytest.mark.parametrize("compare", ["abc", None, 2])
def test_bad_compare_flag_is_explained(served, compare):
    _, _, client, _, _ = served
    main, _, status, table = _search(client, "a person with a bag", k=3, compare=compare)
    assert main == [] and "Compare must be true or false" in status


def test_bad_query_values_are_explained(served):
    _, _, client, _, _ = served
    main, _, status, _ = _search(client, None, k=3)
    assert main == [] and "Type a description" in status
    main, _, status, table = _search(client, 12345, k=3)  # a number is searched as its text
    assert len(main) == 3 and table["query"] == "12345"


@pytest.mark.parametrize("name", [None, 123, "x" * 5000, "#" + "9" * 40, "<img src=x onerror=alert(1)>"])
def test_bad_explain_names_are_explained(served, name):
    _, _, client, _, _ = served
    image, text = client.predict(name, api_name="/explain")
    assert image is None and "not an image of the current gallery" in text
    assert "<img" not in text and len(text) < 400


def test_bad_model_and_gallery_values_are_explained(served):
    from gradio_client.exceptions import AppError

    _, _, client, _, _ = served
    for bad in ("nope", 123):
        with pytest.raises(AppError, match="not in the list of choices"):
            client.predict(bad, api_name="/set_model")
    msg, head = client.predict(None, api_name="/set_model")
    assert msg.startswith("⚠️") and "choose a checkpoint" in msg and "embedded" in head
    for bad in (None, 123, "/etc", "../x"):  # this server allows no folder at all
        msg, _ = client.predict(bad, api_name="/set_gallery")
        assert msg.startswith("⚠️") and "--allow-root" in msg
    info = client.predict(api_name="/info")
    assert info["checkpoint"] == "embedded" and info["allowed_roots"] == []


# ----------------------------------------------------------------------------- per-visitor state
def _photo_folders(root: Path, sizes: dict[str, int]) -> dict[str, list[Path]]:
    from PIL import Image

    from demo.gallery import dataset_gallery

    src = [it.path for it in dataset_gallery("toypedes", toy_root(), "test").items]
    out, start = {}, 0
    for name, n in sizes.items():
        (root / name).mkdir(parents=True)
        out[name] = []
        for p in src[start:start + n]:
            out[name].append(root / name / f"{name}_{p.stem}.png")
            Image.open(p).save(out[name][-1])
        start += n
    return out


def test_each_visitor_keeps_its_own_gallery(tmp_path):
    """Two clients switch to different folders; each searches its own, a new visitor sees the default."""
    use_session_cache()
    from gradio_client import Client

    from demo.gallery import dataset_gallery

    folders = _photo_folders(tmp_path / "allowed", {"a": 5, "b": 3})
    model = load_model()
    default = dataset_gallery("toypedes", toy_root(), "test")
    engine = make_engine(model, default)
    app, url = start(engine, allow_roots=[tmp_path / "allowed"])
    clients = [Client(url + "/", verbose=False, download_files=False) for _ in range(3)]
    a, b, fresh = clients
    try:
        msg, head_a = a.predict("a", api_name="/set_gallery")
        assert "5 images" in msg and "5 images" in head_a
        msg, head_b = b.predict("b", api_name="/set_gallery")
        assert "3 images" in msg and "3 images" in head_b
        for client, name in ((a, "a"), (b, "b")):
            hits = _search(client, "a person in a coat", k=10)[3]["rankings"][0]["hits"]
            assert sorted(h["file"] for h in hits) == sorted(p.name for p in folders[name])
            assert client.predict(api_name="/info")["images"] == len(folders[name])
        # a third visitor, and the default gallery object, are untouched
        assert fresh.predict(api_name="/info")["images"] == len(default)
        hits = _search(fresh, "a person in a coat", k=len(default))[3]["rankings"][0]["hits"]
        assert len(hits) == len(default)
        assert [it.path for it in engine.gallery.items] == [it.path for it in default.items]
        # explain resolves names in the visitor's own gallery only
        name_a = folders["a"][0].name
        assert a.predict(name_a, api_name="/explain")[0] is not None
        assert "not an image" in b.predict(name_a, api_name="/explain")[1]
        # a gallery dropped from memory is said so, not silently replaced by the default
        engine.MAX_GALLERIES = 1
        b.predict("b", api_name="/set_gallery")  # re-indexing b evicts a
        main, _, status, _ = _search(a, "a person in a coat", k=3)
        assert main == [] and "no longer in memory" in status
        assert len(_search(b, "a person in a coat", k=10)[0]) == len(folders["b"])
    finally:
        for c in clients:
            c.close()
        app.close()
