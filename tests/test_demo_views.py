"""The app's Attention, Embeddings and Ablation views, through ``gradio_client`` (as the page calls
them) and against references computed directly with the analysis modules (the CLI's code).

One server for the module (the embedded model on ToyPEDES tiny's test split).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, reference_ranking, start, toy_root, use_session_cache, zero_shot_of

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(engine, client, model, allowed folder) of one launched app."""
    use_session_cache()
    from demo.gallery import dataset_gallery

    allowed = tmp_path_factory.mktemp("allowed")
    model = load_model()
    engine = make_engine(model, dataset_gallery("toypedes", toy_root(), "test"))
    app, url = start(engine, allow_roots=[allowed])
    client = gradio_client.Client(url, verbose=False)
    try:
        yield engine, client, model, allowed
    finally:
        app.close()


def _png(path) -> bytes:
    return Path(path).read_bytes()


def _figure_png(fig) -> bytes:
    from analysis import style

    return style.png_bytes(fig)


def _error(client, match: str, *args, api_name: str) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=match):
        client.predict(*args, api_name=api_name)


# ----------------------------------------------------------------------------- attention


def _count_calls(monkeypatch, module, name: str) -> list:
    """``module.name`` still called, each call appended to the returned list."""
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _reference_attention(model, engine, item, caption):
    from analysis.attention import compute_prefix_attention, load_example

    pixels, tokens = load_example(model, engine.tokenizer, item.path, caption)
    return compute_prefix_attention(model, pixels, tokens, engine.tokenizer, caption)


def test_attention_figures_are_the_clis_for_the_same_inputs(site):
    from analysis.attention import image_prefix_figure, prefix_scales_figure, text_prefix_figure

    engine, client, model, _ = site
    g = engine.gallery
    i = 5
    item, caption = g.items[i], g.items[i].captions[0]
    ref = _reference_attention(model, engine, item, caption)
    img, txt, lam, info = client.predict(g.relative_name(item), None, caption, "image", "all", "mean", "mass",
                                         api_name="/attention")
    assert _png(img) == _figure_png(image_prefix_figure(ref)[0])
    assert _png(txt) == _figure_png(text_prefix_figure(ref)[0])
    assert _png(lam) == _figure_png(prefix_scales_figure(ref.scales)[0])
    # a control re-slices: the image tower's layer 2, head 1, share; the text tower stays all layers, mean
    img2, txt2, _, info2 = client.predict(g.relative_name(item), None, caption, "image", "2", "1", "share",
                                          api_name="/attention")
    assert _png(img2) == _figure_png(image_prefix_figure(ref, quantity="share", layers=[2], heads=[1])[0])
    assert _png(txt2) == _figure_png(text_prefix_figure(ref, quantity="share")[0])
    assert "layer 2, head 1" in info2
    # the similarity and the rank of this image for the caption, against the model run directly
    order, scores = reference_ranking(model, [it.path for it in g.items], caption)
    rank = order.index(i) + 1
    assert f"ranks **{rank}** of {len(g)}" in info
    assert f"Cosine similarity **{scores[rank - 1]:.3f}**" in info


def test_attention_record_is_computed_once_and_controls_only_redraw(site, monkeypatch):
    from demo.context import DemoContext
    from demo.views import attention_view

    engine, _, _, _ = site
    ctx = DemoContext(engine)
    calls = _count_calls(monkeypatch, attention_view, "compute_prefix_attention")
    item = engine.gallery.items[1]
    name, caption = engine.gallery.relative_name(item), "a person in a dark coat"
    outs = {attention_view.show(ctx, None, name, None, caption, tower, layer, "mean", "effective")[0]
            for tower, layer in (("image", "all"), ("image", "0"), ("image", "3"), ("text", "1"))}
    assert len(calls) == 1
    assert len(outs) == 3  # the image figure differs per image-tower layer, and is the "all" one for the text tower


def test_attention_upload_is_the_gallery_image_when_it_is_the_same_file(site):
    from gradio_client import handle_file

    engine, client, _, _ = site
    item = engine.gallery.items[2]
    caption = item.captions[0]
    by_name = client.predict(engine.gallery.relative_name(item), None, caption, "text", "1", "0", "mass",
                             api_name="/attention")
    uploaded = client.predict("", handle_file(str(item.path)), caption, "text", "1", "0", "mass",
                              api_name="/attention")
    assert _png(by_name[0]) == _png(uploaded[0]) and _png(by_name[1]) == _png(uploaded[1])
    assert f"of {len(engine.gallery) + 1}" in uploaded[3]  # ranked among the gallery and itself


@pytest.mark.parametrize("image,caption,tower,layer,head,quantity,match", [
    ("no-such.png", "a man", "image", "all", "mean", "mass", "not an image of the current gallery"),
    ("", "a man", "image", "all", "mean", "mass", "Choose an image"),
    (None, "a man", "image", "all", "mean", "mass", "Choose an image"),
    ("#0", "   ", "image", "all", "mean", "mass", "Type a description"),
    ("#0", "a man", "image", "99", "mean", "mass", "Layer must be 'all' or a whole number from 0 to 3"),
    ("#0", "a man", "image", "abc", "mean", "mass", "Layer must be"),
    ("#0", "a man", "text", "-1", "mean", "mass", "Layer must be"),
    ("#0", "a man", "image", "all", "9", "mass", "Head must be 'mean' or a whole number from 0 to 1"),
    ("#0", "a man", "sideways", "all", "mean", "mass", "Tower must be one of image, text"),
    ("#0", "a man", "image", "all", "mean", "volume", "Quantity must be one of mass, effective, share"),
])
def test_attention_bad_inputs_say_what_to_do(site, image, caption, tower, layer, head, quantity, match):
    _, client, _, _ = site
    _error(client, re.escape(match), image, None, caption, tower, layer, head, quantity, api_name="/attention")


def test_attention_escapes_the_caption_and_the_name(site):
    from demo.context import DemoContext
    from demo.views import attention_view

    engine, _, _, _ = site
    ctx = DemoContext(engine)
    caption = '<img src=x onerror="alert(1)"> **bold** [a](http://x.y)'
    *_, info = attention_view.show(ctx, None, "#0", None, caption, "image", "all", "mean", "mass")
    assert "<img" not in info and "&lt;img" in info and "\\*\\*bold" in info


# ----------------------------------------------------------------------------- embeddings


def test_embeddings_map_scores_identities_and_selection(site, tmp_path):
    from analysis.embeddings import embed_records
    from analysis.umap_plot import select_identities, subset_scores
    from upperson.data import ImageRecord

    engine, client, model, _ = site
    g = engine.gallery
    plot, choices, images, captions, info = client.predict(3, "", api_name="/embeddings")
    assert Path(plot).stat().st_size > 1000 and images == []
    # the identities the CLI draws (seed 0), and the scores in the titles, from features computed anew
    records = [ImageRecord(it.path, it.pid, list(it.captions), i) for i, it in enumerate(g.items)]
    chosen = select_identities(records, 3, 0)
    pids = sorted({r.pid for r in chosen})
    assert [c[1] for c in choices["choices"]] == [str(p) for p in pids]
    for label, m in (("Zero-shot backbone", zero_shot_of(model)), ("UP-Person", model)):
        s = subset_scores(embed_records(m, engine.tokenizer, chosen, tmp_path / "cache", progress=False))
        assert f"{label}: R@1 {s['R1']:.1f} %, silhouette {s['silhouette']:.2f}" in info
    # choosing an identity: its images (all of them) and captions; the highlighted map differs
    pid = pids[1]
    plot2, choices2, images2, captions2, _ = client.predict(3, str(pid), api_name="/embeddings")
    own = [it for it in g.items if it.pid == pid]
    assert sorted(Path(x["caption"]).name for x in images2) == sorted(it.path.name for it in own)
    assert f"**Identity {pid}**" in captions2 and choices2["value"] == str(pid)
    assert _png(plot2) != _png(plot)


def test_embeddings_are_computed_once_per_view_and_n(site, monkeypatch, tmp_path):
    from demo.context import DemoContext
    from demo.views import embeddings_view

    engine, _, _, _ = site
    monkeypatch.setattr(embeddings_view, "MAP_FOLDER", tmp_path)  # not a map kept by an earlier test
    ctx = DemoContext(engine)
    calls = _count_calls(monkeypatch, embeddings_view, "map_panel")
    key1, m1 = embeddings_view.compute_map(ctx, None, 2)
    key2, m2 = embeddings_view.compute_map(ctx, ctx.new_state(), 2.0)
    assert key1 == key2 and m1 is m2 and len(calls) == 2  # two panels, once


@pytest.mark.parametrize("n,identity,match", [
    ("abc", "", "number of identities must be a whole number from 2 to 8"),
    (None, "", "number of identities must be"),
    (1, "", "number of identities must be"),
    (2.5, "", "number of identities must be"),
    (3, "99999999999999999999999", "is not on this map; choose one of"),
    (3, "<b>x</b>", "is not on this map"),
])
def test_embeddings_bad_inputs_say_what_to_do(site, n, identity, match):
    _, client, _, _ = site
    _error(client, re.escape(match), n, identity, api_name="/embeddings")


# ----------------------------------------------------------------------------- ablation


def _shipped():
    from demo.views.ablation_view import shipped_folder

    return shipped_folder()


def _same_table(shown: dict, csv: Path) -> None:
    """The table the API returns holds every column and value of the CSV (floats as written)."""
    ref = pd.read_csv(csv)
    got = pd.DataFrame(shown["data"], columns=shown["headers"])
    assert set(ref.columns) <= set(got.columns) and len(got) == len(ref)
    for c in ref.columns:
        a, b = ref[c].tolist(), got[c].tolist()
        for x, y in zip(a, b):
            if isinstance(x, float) and math.isnan(x):
                assert y is None or (isinstance(y, float) and math.isnan(y)) or y == "", (c, x, y)
            elif isinstance(x, float):
                assert float(y) == pytest.approx(x), (c, x, y)
            else:
                assert str(y) == str(x), (c, x, y)


def test_ablation_shipped_table_figures_and_command(site):
    from analysis import ablation

    _, client, _, _ = site
    csv = _shipped() / "ablation.csv"
    table, bars, params, curves, command, info = client.predict("", "R1+mAP", api_name="/ablation")
    _same_table(table, csv)
    df = ablation.read_csv(csv)
    assert _png(bars) == _figure_png(ablation.bars_figure(df)[0])
    assert _png(params) == _figure_png(ablation.params_figure(df)[0])
    assert _png(curves) == (_shipped() / "ablation_curves.png").read_bytes()
    from demo.views.ablation_view import portable_command
    from demo.views.study_panel import readme_command

    # the README's command, with the paths of the machine that made it as placeholders
    made_by = readme_command((_shipped() / "README.md").read_text())
    assert "python -m analysis ablation" in command and command.splitlines()[0] == portable_command(made_by)
    _, mINP, *_ = client.predict("", "mINP", api_name="/ablation")
    assert _png(mINP) == _figure_png(ablation.bars_figure(df, ["mINP"])[0])


def test_ablation_folder_with_intervals_shows_them_and_marks_significance(site):
    from analysis import ablation
    from demo.views.ablation_view import SIGNIFICANCE

    _, client, _, allowed = site
    folder = allowed / "<b id=inj>study"
    folder.mkdir()
    df = pd.read_csv(_shipped() / "ablation.csv")
    n = len(df)
    df["seeds"] = 3
    df["R1_std"] = 0.5
    df["R1_ci_low"], df["R1_ci_high"] = df["R1"] - 2, df["R1"] + 2
    df["mAP_ci_low"], df["mAP_ci_high"] = df["mAP"] - 1, df["mAP"] + 1
    ref = float(df.loc[df["variant"] == "upperson", "R1"].iloc[0])
    df["R1_diff_vs_upperson"] = df["R1"] - ref
    df["R1_diff_ci_low"], df["R1_diff_ci_high"] = df["R1_diff_vs_upperson"] - 3, df["R1_diff_vs_upperson"] + 3
    df.to_csv(folder / "ablation.csv", index=False)
    (folder / "README.md").write_text("# x\n\nMade by:\n\n```\npython -m analysis ablation --run --seeds 3\n```\n")
    table, bars, _, curves, command, info = client.predict(str(folder), "R1", api_name="/ablation")
    _same_table(table, folder / "ablation.csv")
    got = pd.DataFrame(table["data"], columns=table["headers"])
    expected = ["reference" if v == "upperson" else ("* significant" if abs(d) > 3 else "n.s.")
                for v, d in zip(df["variant"], df["R1_diff_vs_upperson"])]
    assert got[SIGNIFICANCE].tolist() == expected and len(got) == n
    assert _png(bars) == _figure_png(ablation.bars_figure(ablation.read_csv(folder / "ablation.csv"), ["R1"])[0])
    assert curves is None and command == "python -m analysis ablation --run --seeds 3"
    assert "<b" not in info and "&lt;b id=inj&gt;study" in info


def test_ablation_bad_inputs_say_what_to_do(site):
    _, client, _, allowed = site
    (allowed / "empty").mkdir(exist_ok=True)
    broken = allowed / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "ablation.csv").write_text("a,b\n1,2\n")
    _error(client, "not inside an allowed folder", "/etc", "R1", api_name="/ablation")
    _error(client, "not inside an allowed folder", "../..", "R1", api_name="/ablation")
    _error(client, "no ablation.csv in this folder", "empty", "R1", api_name="/ablation")
    _error(client, "not a folder", "missing", "R1", api_name="/ablation")
    _error(client, "cannot be read as an ablation table", "broken", "R1", api_name="/ablation")
    _error(client, re.escape("Metric must be one of R1+mAP, R1, R5, R10, mAP, mINP"), "", "R2", api_name="/ablation")
    _error(client, "Metric must be one of", "", None, api_name="/ablation")


# ----------------------------------------------------------------------------- one implementation, two front ends


def test_the_app_png_of_a_figure_is_the_file_the_cli_writes(tmp_path):
    """The CLI saves each figure with style.save; the app renders the same function's figure with
    style.png_bytes: the PNG files are byte for byte the same."""
    import numpy as np

    from analysis import ablation, attention, style, umap_plot
    from analysis.embeddings import SplitEmbeddings

    rng = np.random.default_rng(0)
    att = attention.PrefixAttention(rng.random((3, 2, 1 + 6)), rng.random((3, 2, 5)), {"image": [0.5, 1.0, 2.0],
                                    "text": [1.0, 0.7, 0.2]}, (3, 2), ["<start>", "a", "red", "coat", "<end>"],
                                    rng.random((12, 8, 3)), "a red coat")
    emb = SplitEmbeddings(torch.nn.functional.normalize(torch.randn(6, 4), dim=-1), np.array([1, 1, 2, 2, 3, 3]),
                          torch.nn.functional.normalize(torch.randn(6, 4), dim=-1), np.array([1, 1, 2, 2, 3, 3]),
                          np.arange(6), 0)
    panels = [umap_plot.MapPanel("a", emb, rng.random((12, 2)), {"R1": 50.0, "silhouette": 0.1})]
    df = ablation.read_csv(_shipped() / "ablation.csv")
    pairs = [
        (attention.plot_image_prefix(att, tmp_path, quantity="share", layers=[1], heads=[0]),
         attention.image_prefix_figure(att, quantity="share", layers=[1], heads=[0])),
        (attention.plot_text_prefix(att, tmp_path), attention.text_prefix_figure(att)),
        (attention.plot_prefix_scales(att.scales, tmp_path), attention.prefix_scales_figure(att.scales)),
        (umap_plot.plot_umap(panels, tmp_path, n_ids=3), umap_plot.umap_panels_figure(panels, n_ids=3)),
        (ablation.plot_bars(df, tmp_path), ablation.bars_figure(df)),
        (ablation.plot_params(df, tmp_path), ablation.params_figure(df)),
    ]
    for record, (fig, caption) in pairs:
        assert record.png.read_bytes() == style.png_bytes(fig), record.name
        assert record.caption == caption


def test_shared_cache_computes_a_key_once_under_concurrency_and_evicts_the_oldest():
    import threading
    import time

    from demo.views.common import LRU

    cache, made = LRU(2), []

    def make():
        made.append(1)
        time.sleep(0.1)
        return "value"

    threads = [threading.Thread(target=cache.get_or_make, args=("k", make)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and cache.get("k") == "value"
    with pytest.raises(ZeroDivisionError):
        cache.get_or_make("bad", lambda: 1 / 0)
    assert "bad" not in cache and cache.get_or_make("bad", lambda: 2) == 2  # a failure is not cached
    cache.put("c", 3)  # "k" is now the least recently used of three
    assert cache.get("k") is None and cache.get("c") == 3
