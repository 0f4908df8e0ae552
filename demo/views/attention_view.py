"""The Attention tab: where one image and one caption attend to UP-Person's prefix.

The numbers and figures are the CLI's (``python -m analysis attention``): the record is
:func:`analysis.attention.compute_prefix_attention`, the figures are
:func:`analysis.attention.image_prefix_figure`, :func:`~analysis.attention.text_prefix_figure` and
:func:`~analysis.attention.prefix_scales_figure`. The record of a (checkpoint, image, caption) is
computed once (one forward pass of each tower, under the engine's lock) and kept in a small LRU
cache shared by visitors; the controls (tower, layer, head, quantity) only re-slice it and redraw,
and each drawing is cached too.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gradio as gr
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

from analysis.attention import (QUANTITIES, QUANTITY_LABELS, PrefixAttention, compute_prefix_attention,
                                image_prefix_figure, prefix_scales_figure, text_prefix_figure)
from demo.context import DemoContext, SharedUI
from demo.markup import text as esc
from demo.search import QueryError
from demo.views.common import (cache_of, figure_file, figure_image, hidden_api, in_page, lenient_dropdown,
                               lenient_radio, opened_by, screen_layout, user_error, view_key)

log = logging.getLogger(__name__)

TOWERS = ("image", "text")
ALL_LAYERS = "all"
MEAN_HEADS = "mean"
RECORDS, RECORDS_SIZE = "attention-records", 16  # (view, image, caption) -> AttentionRecord, shared by visitors
DRAWINGS, DRAWINGS_SIZE = "attention-drawings", 256  # (record key, figure, controls) -> PNG file


@dataclass
class AttentionRecord:
    """Everything the tab shows for one image and caption, before any control is applied."""

    att: PrefixAttention
    name: str  # the image's gallery name, or the uploaded file's name
    similarity: float  # cosine similarity of the image and the caption (UP-Person)
    rank: int  # the image's rank in the visitor's gallery for this caption (1 = first)
    out_of: int  # gallery images ranked (plus the uploaded one)
    scaled: bool  # S-Prefix (learned lambda) rather than a vanilla prefix
    notices: tuple[str, ...] = ()
    uploaded: bool = False  # an uploaded image (ranked among the gallery and itself), not a gallery one

    def heads(self, tower: str) -> int:
        return (self.att.image_mass if tower == "image" else self.att.text_mass).shape[1]


@dataclass(frozen=True)
class Controls:
    """The parsed controls: the tower they apply to, its layer (None = all) and head (None = mean)."""

    tower: str
    layer: Optional[int]
    head: Optional[int]
    quantity: str


# ----------------------------------------------------------------------------- parsing


def _whole(value: object) -> Optional[int]:
    try:
        f = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


def parse_controls(rec: AttentionRecord, tower: object, layer: object, head: object, quantity: object) -> Controls:
    """The controls checked against the record's model; QueryError says what to choose instead."""
    if tower not in TOWERS:
        raise QueryError(f"Tower must be one of {', '.join(TOWERS)}; got {str(tower)[:40]!r}.")
    if quantity not in QUANTITIES:
        raise QueryError(f"Quantity must be one of {', '.join(QUANTITIES)}; got {str(quantity)[:40]!r}.")
    layer_i = _index(layer, "layer", ALL_LAYERS, rec.att.layer_count(tower), str(tower))
    head_i = _index(head, "head", MEAN_HEADS, rec.heads(tower), str(tower))
    return Controls(str(tower), layer_i, head_i, str(quantity))


def _index(value: object, noun: str, every: str, count: int, tower: str) -> Optional[int]:
    """A layer or head from 0 to ``count - 1``; None for empty or ``every`` ('all', 'mean')."""
    if value is None or str(value).strip().lower() in ("", every):
        return None
    i = _whole(value)
    if i is None or not 0 <= i < count:
        raise QueryError(f"{noun.capitalize()} must be '{every}' or a whole number from 0 to {count - 1} (the {tower} "
                         f"tower has {count} {noun}s); got {str(value)[:40]!r}.")
    return i


def _upload_key(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "upload:" + h.hexdigest()


# ----------------------------------------------------------------------------- computing


def record_for(ctx: DemoContext, state, image: object, upload: object,
               caption: object) -> tuple[tuple, AttentionRecord]:
    """(cache key, record) of an image (a gallery name, or an uploaded file, which wins) and a caption.

    Computed once per (checkpoint, gallery, image, caption); QueryError for what cannot be shown.
    """
    from upperson.data import build_transforms

    s = ctx.valid_state(state)
    if caption is not None and not isinstance(caption, str):
        raise QueryError(f"The caption must be text; got {type(caption).__name__}.")
    if caption is None or not str(caption).strip():
        raise QueryError("Type a description of the person as the caption, or pick one of the image's captions.")
    q = ctx.engine.prepare(caption)  # cleans, checks, truncates with a notice
    index: Optional[int] = None
    if upload not in (None, ""):
        path = Path(upload["path"] if isinstance(upload, dict) else str(upload))
        if not path.is_file():
            raise QueryError("The uploaded image is not available any more; upload it again.")
        image_key, name = _upload_key(str(path)), f"uploaded {path.name}"
    else:
        if image is not None and not isinstance(image, str):
            raise QueryError(f"The image name must be text (as the gallery shows it); got {type(image).__name__}.")
        if image is None or not image.strip():
            raise QueryError("Choose an image of the gallery (or click a search result, or upload one).")
        index, item = ctx.item(s, image)
        path, image_key, name = item.path, f"item:{item.path}", ctx.gallery(s).relative_name(item)
    key = (*view_key(ctx, s), image_key, q.text)

    def make() -> AttentionRecord:
        try:
            with Image.open(path) as im:
                pil = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError):
            raise QueryError(f"{name} is not a readable image; upload a JPEG or PNG.") from None
        with ctx.model(s) as model:
            pixels = build_transforms(model.image_size, train=False)(pil)
            tokens = q.tokens[0]
            try:
                att = compute_prefix_attention(model, pixels, tokens, ctx.engine.tokenizer, q.text)
            except ValueError as exc:  # a model without a prefix
                raise QueryError(f"{exc}; load a checkpoint with a prefix.") from None
            with torch.no_grad():
                text = F.normalize(model.encode_text(tokens[None]).float(), dim=-1)[0]
                img = None if index is not None else F.normalize(model.encode_image(pixels[None]).float(), dim=-1)[0]
            scaled = any(b.prefix is not None and b.prefix.scaled for b in model.blocks())
        feats = ctx.features(s)
        sims = feats @ text
        sim = float(sims[index]) if index is not None else float(img @ text)
        others = torch.cat([sims[:index], sims[index + 1:]]) if index is not None else sims
        rank = 1 + int((others > sim).sum())
        return AttentionRecord(att, name, sim, rank, len(feats) + (index is None), scaled, tuple(q.notices),
                               uploaded=index is None)

    return key, cache_of(ctx, RECORDS, RECORDS_SIZE).get_or_make(key, make)


def draw(ctx: DemoContext, key: tuple, rec: AttentionRecord, c: Controls) -> tuple[str, str, str]:
    """The three figure files for the controls: the image tower's per-patch maps, the text tower's
    token x layer map (the chosen tower with the chosen layer and head, the other with every layer,
    mean over heads), and lambda per layer."""
    def sel(tower: str):
        if tower != c.tower:
            return None, None
        return (None if c.layer is None else [c.layer]), (None if c.head is None else [c.head])

    drawings = cache_of(ctx, DRAWINGS, DRAWINGS_SIZE)
    il, ih = sel("image")
    tl, th = sel("text")
    lay = screen_layout()  # drawn for the visitor's screen (a phone's, or the CLI's figure)
    image = drawings.get_or_make((key, "image", c.quantity, il and tuple(il), ih and tuple(ih), lay.name),
                                 lambda: figure_file(ctx, lambda: image_prefix_figure(
                                     rec.att, quantity=c.quantity, layers=il, heads=ih, layout=lay)))
    text = drawings.get_or_make((key, "text", c.quantity, tl and tuple(tl), th and tuple(th), lay.name),
                                lambda: figure_file(ctx, lambda: text_prefix_figure(
                                    rec.att, quantity=c.quantity, layers=tl, heads=th, layout=lay)))
    scales = drawings.get_or_make((key, "scales", lay.name), lambda: figure_file(
        ctx, lambda: prefix_scales_figure(rec.att.scales, scaled=rec.scaled, layout=lay)))
    return image, text, scales


def summary(rec: AttentionRecord, c: Controls) -> str:
    """The Markdown line above the figures (every user-controlled string escaped)."""
    where = "all layers" if c.layer is None else f"layer {c.layer}"
    heads = "mean over heads" if c.head is None else f"head {c.head}"
    lines = [f"**{esc(rec.name)}** · caption: “{esc(rec.att.caption)}”",
             f"Cosine similarity **{rec.similarity:.3f}** (UP-Person, -1 to 1) · this image ranks **{rec.rank}** of "
             f"{rec.out_of} for the caption (the gallery" + (" and the uploaded image)" if rec.uploaded else ")"),
             f"Showing {esc(QUANTITY_LABELS[c.quantity])}; {c.tower} tower: {where}, {heads} "
             f"(the other tower: all layers, mean over heads)."]
    lines += [f"> ⚠️ {esc(n)}" for n in rec.notices]
    return "\n\n".join(lines)


def show(ctx: DemoContext, state, image, upload, caption, tower, layer, head, quantity):
    """(image figure, text figure, lambda figure, summary) -- the ``/attention`` action."""
    key, rec = record_for(ctx, state, image, upload, caption)
    c = parse_controls(rec, tower, layer, head, quantity)
    return (*draw(ctx, key, rec, c), summary(rec, c))


# ----------------------------------------------------------------------------- the tab


def _names(ctx: DemoContext, state) -> list[str]:
    g = ctx.gallery(state)
    return [g.relative_name(it) for it in g.items]


def _first(ctx: DemoContext, state=None) -> tuple[Optional[str], list[str]]:
    """(name, captions) of the first gallery image with a caption (else the first image, no captions)."""
    g = ctx.gallery(state)
    item = next((it for it in g.items if it.captions), g.items[0] if g.items else None)
    return (None, []) if item is None else (g.relative_name(item), list(item.captions))


def build_attention_tab(ctx: DemoContext, ui: SharedUI) -> None:
    """The Attention tab's components and events (inside ``with gr.Tab(...)``)."""
    tabs = opened_by()  # the tabs whose opening shows this view: it opens on the default image and caption
    model = ctx.engine.model
    n_layers = max(len(model.blocks("image")), len(model.blocks("text")))
    n_heads = max(model.blocks("image")[0].attn.num_heads, model.blocks("text")[0].attn.num_heads)
    gr.Markdown("How much each image patch and each caption token attends to UP-Person's learned prefix, per "
                "layer and head (the figures `python -m analysis attention` writes). It opens on the gallery's "
                "first image and caption; pick another image (or click a search result), a caption, then "
                "**Show attention**; the controls redraw at once.")
    first_name, first_captions = _first(ctx)
    with gr.Row():
        with gr.Column(scale=2, min_width=260):
            image = lenient_dropdown(choices=_names(ctx, None), value=first_name, allow_custom_value=True, filterable=True,
                           label="Gallery image (name, or click a search result)", elem_id="attention-image")
            caption = lenient_dropdown(choices=first_captions, value=first_captions[0] if first_captions else None,
                                       allow_custom_value=True, filterable=True,
                             label="Caption (type one, or pick one of the image's)", elem_id="attention-caption")
            run = gr.Button("Show attention", variant="primary", elem_id="attention-run")
        with gr.Column(scale=1, min_width=200):
            upload = gr.Image(label="…or upload an image (used instead)", type="filepath", sources=["upload"],
                              height=180, elem_id="attention-upload")
        with gr.Column(scale=2, min_width=260):
            tower = lenient_radio(list(TOWERS), value="image", label="Tower (layer and head apply to it)",
                         elem_id="attention-tower")
            with gr.Row():
                layer = lenient_dropdown([ALL_LAYERS] + [str(i) for i in range(n_layers)], value=ALL_LAYERS,
                               label="Layer", elem_id="attention-layer", min_width=100)
                head = lenient_dropdown([MEAN_HEADS] + [str(i) for i in range(n_heads)], value=MEAN_HEADS,
                              label="Head", elem_id="attention-head", min_width=100)
            quantity = lenient_radio([(f"{q}: {QUANTITY_LABELS[q]}", q) for q in QUANTITIES], value="mass",
                            label="Quantity", elem_id="attention-quantity")
    info = gr.Markdown(elem_id="attention-info", latex_delimiters=[])
    image_fig = figure_image("Image tower: each patch's prefix attention", "attention-image-map")
    with gr.Row():
        text_fig = figure_image("Text tower: token × layer", "attention-text-map")
        scale_fig = figure_image("λ per layer", "attention-scales")

    def attention(image_name, upload_file, caption_text, tower_name, layer_index, head_index, quantity_name, state):
        """Prefix attention of an image (gallery name, or upload) and a caption, sliced by the controls."""
        try:
            return show(ctx, state, image_name, upload_file, caption_text, tower_name, layer_index, head_index,
                        quantity_name)
        except QueryError as exc:
            raise user_error(exc) from None

    def redraw(image_name, uploaded, caption_text, tower_, layer_, head_, quantity_, state):
        """A control changed: redraw if an image and a caption are chosen (nothing to say otherwise)."""
        if not (uploaded or (isinstance(image_name, str) and image_name.strip())) or not (
                isinstance(caption_text, str) and caption_text.strip()):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return attention(image_name, uploaded, caption_text, tower_, layer_, head_, quantity_, state)

    def captions_of(image_name, caption_text, state):
        """The chosen image's own captions as choices (the first one chosen when none is typed)."""
        try:
            _, item = ctx.item(state, image_name)
        except QueryError:
            return gr.update(choices=[])
        from demo.gallery import normalise_caption

        typed = caption_text.strip() if isinstance(caption_text, str) else ""
        if typed and normalise_caption(typed) not in ctx.gallery_index(state).caption_pids:
            return gr.update(choices=list(item.captions) + [typed], value=typed)  # the visitor's own caption stays
        return gr.update(choices=list(item.captions), value=item.captions[0] if item.captions else None)

    def from_search(name, state):
        try:
            ctx.item(state, name)
        except QueryError:
            return gr.skip()
        return gr.update(value=name)

    def new_gallery(state):
        name, caps = _first(ctx, state)
        return (gr.update(choices=_names(ctx, state), value=name),
                gr.update(choices=caps, value=caps[0] if caps else None), None, None, None, "")

    def on_open(image_name, uploaded, caption_text, tower_, layer_, head_, quantity_, state, shown):
        """The tab was opened: show the chosen (default) image and caption, once."""
        if shown:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return page_redraw(image_name, uploaded, caption_text, tower_, layer_, head_, quantity_, state)

    inputs = [image, upload, caption, tower, layer, head, quantity, ui.state]
    outputs = [image_fig, text_fig, scale_fig, info]
    page_attention = in_page(attention, 4, 3)
    page_redraw = in_page(redraw, 4, 3)
    run.click(page_attention, inputs, outputs, api_visibility="private", concurrency_id="engine")
    hidden_api(attention, inputs, outputs, "attention")
    for control in (tower, layer, head, quantity):
        control.change(page_redraw, inputs, outputs, api_visibility="private", concurrency_id="engine")
    image.change(captions_of, [image, caption, ui.state], caption, api_visibility="private")
    ui.selected.change(from_search, [ui.selected, ui.state], image, api_visibility="private")
    ui.state.change(new_gallery, [ui.state], [image, caption, *outputs], api_visibility="private")
    for tab in tabs:
        tab.select(on_open, [*inputs, image_fig], outputs, api_visibility="private", concurrency_id="engine")
