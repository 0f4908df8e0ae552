""""Why it matched", tied to the query: the explanation of :meth:`SearchEngine.explain_query` as an image
panel and Markdown.

The numbers are :func:`analysis.explain.explain`'s (those ``python -m analysis explain`` saves); they
are drawn here with PIL, not with :func:`analysis.explain.explain_figure`, whose matplotlib figure
takes seconds to draw on a loaded CPU (docs/explain.md). Panels, left to right: the image, the whole
query's patch map, one map per mapped word; each map is its positive part on its own scale.
"""

from __future__ import annotations

import textwrap
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from demo.heatmap import overlay
from demo.markup import text as esc
from demo.search import QueryExplanation

TITLE_HEIGHT = 18
GAP = 6


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


#: what the bitmap font (latin-1 only) draws for the typographic marks of the titles
_PLAIN = str.maketrans({"“": '"', "”": '"', "…": "..."})


def _drawable(title: str, font: ImageFont.ImageFont) -> str:
    """``title`` as ``font`` can draw it: the bitmap font (Pillow < 10.1, or no FreeType) encodes
    latin-1 only, so other characters become ``?`` there instead of raising."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return title
    return title.translate(_PLAIN).encode("latin-1", "replace").decode("latin-1")


def panel_titles(qe: QueryExplanation) -> list[str]:
    """The titles of the panel's tiles, left to right."""
    ex = qe.explanation
    return ["image", "whole query"] + [f"“{textwrap.shorten(ex.words[i], 14, placeholder='…')}”"
                                       for i in ex.word_maps]


def draw_panel(qe: QueryExplanation, height: int = 384) -> Image.Image:
    """The image, then an overlay per map (its positive part, normalised on its own), titled."""
    ex = qe.explanation
    base = qe.image.convert("RGB")
    width = max(1, round(base.width * height / max(1, base.height)))
    tiles = [base.resize((width, height), Image.BILINEAR)]
    tiles += [overlay(base, np.clip(m, 0, None), height=height) for m in [ex.patch_map, *ex.word_maps.values()]]
    titles = panel_titles(qe)
    tile_w = max(width, 72)
    out = Image.new("RGB", (len(tiles) * tile_w + (len(tiles) - 1) * GAP, height + TITLE_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = _font()
    for k, (tile, title) in enumerate(zip(tiles, titles)):
        x = k * (tile_w + GAP)
        out.paste(tile, (x + (tile_w - tile.width) // 2, TITLE_HEIGHT))
        draw.text((x + tile_w // 2, TITLE_HEIGHT // 2), _drawable(title, font), fill=(20, 20, 20), font=font,
                  anchor="mm")
    return out


def explanation_markdown(qe: QueryExplanation, checkpoint: str, *, from_zero_shot: bool = False) -> str:
    """What the panel shows, the similarity, each word's weight and the notices (user text escaped)."""
    ex = qe.explanation
    mapped = ", ".join(f"“{esc(ex.words[i])}”" for i in ex.word_maps)
    lines = [f"**Tied to the query** (UP-Person, PETL weights *{esc(checkpoint)}*): **{esc(qe.query)}**"]
    if from_zero_shot:
        lines.append("This image is one of the zero-shot CLIP results; the explanation is UP-Person's "
                     "(only the UP-Person model is explained).")
    maps = (f"then, per colour word ({mapped}), the patches whose evidence the word adds (the query's map minus the "
            "map with that word masked)") if ex.word_maps else "no colour word in the query, so no per-word map"
    lines.append(f"Left to right: the image; the patches that raise the similarity ({ex.similarity:.3f}) for the "
                 f"whole query (gradient × input through both towers); {maps}. Each map on its own scale, brightest "
                 f"where largest. {1 + len(ex.word_maps)} forward and backward pass(es), {qe.seconds:.2f} s.")
    weights = " · ".join((f"**{esc(w)}**" if i in ex.word_maps else esc(w)) + f" {v:+.3g}"
                         for i, (w, v) in enumerate(zip(ex.words, ex.word_weights.tolist())))
    lines.append("**Word weights** (+ raises the similarity, − lowers it; compare words with each other): "
                 + (weights or "none"))
    lines.extend(f"> ⚠️ {esc(n)}" for n in qe.notices)
    return "\n\n".join(lines)


def explanation_json(qe: QueryExplanation, name: str, checkpoint: str) -> dict:
    """Every number of the explanation (:meth:`analysis.explain.Explanation.to_json`), with what was explained."""
    return {"image": name, "model": "UP-Person", "checkpoint": checkpoint, "query": qe.query,
            "notices": qe.notices, "seconds": round(qe.seconds, 4), **qe.explanation.to_json()}


def no_query_text(reason: Optional[str]) -> str:
    """The message when there is no query text to explain (``reason``: "image" after an image search)."""
    if reason == "image":
        return ("ℹ️ These results come from an image search: there is no query text to explain. The "
                "prefix-attention view does not depend on the query; search with a description to see which "
                "words matched which regions.")
    return ("ℹ️ No query text to explain: search with a description (or give it to `/explain_query`), then "
            "select a result to see which words matched which regions.")
