"""Search's "Why it matched" tied to the query, through gradio_client (``/explain_query``).

The reference numbers are computed here with :func:`analysis.explain.explain` on the model and the
gallery file itself; the demo's code is not used for them.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from markdown_it import MarkdownIt
from PIL import Image

from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, start, toy_root, use_session_cache

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RED = "a man in a red shirt and blue jeans"
GREEN = "a man in a green shirt and black jeans"


@pytest.fixture(scope="module")
def served():
    """(engine, gradio client, model) on the tiny ToyPEDES test split."""
    use_session_cache()
    from gradio_client import Client

    from demo.gallery import dataset_gallery

    model = load_model()
    engine = make_engine(model, dataset_gallery("toypedes", toy_root(), "test"))
    app, url = start(engine)
    client = Client(url + "/", verbose=False)
    try:
        yield engine, client, model
    finally:
        client.close()
        app.close()


def _explain(client, name, query):
    return client.predict(name, query, api_name="/explain_query")


def _reference(model, path, query):
    """analysis.explain's explanation of the file at ``path`` against ``query`` (its default word choice)."""
    from analysis.explain import explain
    from upperson.data import build_tokenizer, build_transforms

    pixels = build_transforms(model.image_size, train=False)(Image.open(path).convert("RGB"))
    return explain(model, build_tokenizer(model.config.name), pixels, query)


def test_the_explanation_follows_the_query_and_is_analysis_explains(served):
    engine, client, model = served
    item = engine.gallery.items[4]
    name = engine.gallery.relative_name(item)
    answers = {q: _explain(client, name, q) for q in (RED, GREEN)}
    for query, (image, text, numbers) in answers.items():
        ref = _reference(model, item.path, query)
        assert image is not None and Image.open(image).size[0] > Image.open(image).size[1]  # the tiles side by side
        assert numbers["image"] == name and numbers["query"] == query and numbers["words"] == ref.words
        assert numbers["similarity"] == pytest.approx(ref.similarity, abs=1e-6)
        np.testing.assert_allclose(numbers["patch_map"], ref.patch_map, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(numbers["word_weights"], ref.word_weights, rtol=1e-5, atol=1e-9)
        assert [m["index"] for m in numbers["word_maps"]] == list(ref.word_maps) and len(ref.word_maps) == 2
        for m in numbers["word_maps"]:
            np.testing.assert_allclose(m["map"], ref.word_maps[m["index"]], rtol=1e-5, atol=1e-9)
        assert html.escape(query) in text and f"{ref.similarity:.3f}" in text
        assert all(f"“{ref.words[i]}”" in text for i in ref.word_maps)
    (img_r, _, red), (img_g, _, green) = answers[RED], answers[GREEN]
    assert not np.allclose(red["patch_map"], green["patch_map"])  # the map changes with the query
    assert red["similarity"] != green["similarity"]
    assert open(img_r, "rb").read() != open(img_g, "rb").read()


@pytest.mark.parametrize("query", ["", "   \n ", None])
def test_no_query_text_is_said_plainly(served, query):
    engine, client, _ = served
    image, text, numbers = _explain(client, engine.gallery.relative_name(engine.gallery.items[0]), query)
    assert image is None and "No query text to explain" in text
    assert numbers["error"].startswith("no query text to explain")  # an API client is told why, not given {}


def test_hostile_query_text_is_escaped(served):
    engine, client, _ = served
    query = '<img src=x onerror="alert(1)"> [a link](http://example.com) **bold** red `code`'
    image, text, numbers = _explain(client, engine.gallery.relative_name(engine.gallery.items[1]), query)
    assert image is not None and numbers["query"] == query and "<img" in numbers["words"]
    rendered = MarkdownIt("commonmark").render(text)
    assert "<img" not in rendered and "<a " not in rendered and "<code>" not in rendered
    assert "bold</strong>" not in rendered
    assert query in html.unescape(re.sub(r"<[^>]+>", "", rendered))  # shown as the text it is


def test_a_long_query_is_cut_as_the_search_cuts_it_and_maps_at_most_four_words(served):
    from demo.search import EXPLAIN_WORD_MAPS

    engine, client, _ = served
    query = " ".join(["red", "blue", "green", "black", "white", "grey"] * 400)  # 12,000+ characters
    image, text, numbers = _explain(client, engine.gallery.relative_name(engine.gallery.items[2]), query)
    assert image is not None and len(numbers["word_maps"]) == EXPLAIN_WORD_MAPS == 4
    assert query.startswith(numbers["query"]) and len(numbers["words"]) == 75  # the model reads 75 tokens
    assert "first 2000 characters" in text and "colour words; the first 4 get a map" in text


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../../etc/passwd", "imgs/../../../etc/passwd", "#99999", "",
                                  None, "<img src=x onerror=alert(1)>"])
def test_names_outside_the_gallery_are_refused_as_explain_refuses_them(served, name):
    _, client, _ = served
    image, text, _ = _explain(client, name, RED)
    assert image is None and "not an image of the current gallery" in text
    assert "<img" not in text and client.predict(name, api_name="/explain")[1] == text


def test_the_panel_draws_with_pillows_bitmap_font_too(monkeypatch):
    """requirements.txt allows Pillow 10.0, whose load_default() takes no size and gives the latin-1
    bitmap font (as does any Pillow built without FreeType): the panel's titles (“word”) must still
    draw, not raise UnicodeEncodeError."""
    from analysis.explain import Explanation
    from demo.query_explain import draw_panel, panel_titles
    from demo.search import QueryExplanation
    from PIL import ImageFont

    words = ["a", "red", "coat", "blue"]
    grid = np.arange(12, dtype=np.float64).reshape(3, 4) - 4
    ex = Explanation("a red coat blue", 0.25, (3, 4), grid, ["<start>", *words, "<end>"], np.zeros(6), words,
                     np.array([0.1, 0.4, -0.2, 0.3]), {1: grid, 3: -grid})
    qe = QueryExplanation(Image.new("RGB", (16, 48), (200, 30, 30)), None, ex.caption, ex, [], 0.0)
    assert panel_titles(qe) == ["image", "whole query", "“red”", "“blue”"]
    panels = [draw_panel(qe, height=96)]
    bitmap = ImageFont.load_default_imagefont()

    def old_load_default(*args, **kwargs):  # Pillow 10.0's: no size argument, the bitmap font
        if args or kwargs:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    panels.append(draw_panel(qe, height=96))
    for panel in panels:
        assert panel.size[1] == 96 + 18 and panel.size[0] > 4 * 72
        assert (np.asarray(panel.convert("L"))[:18] < 128).sum() > 0  # the titles are drawn
