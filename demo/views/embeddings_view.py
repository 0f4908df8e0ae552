"""The Embeddings tab: a UMAP of N identities' images and captions, zero-shot beside UP-Person.

The same computation and figure as ``python -m analysis umap``: the identities are drawn by
:func:`analysis.umap_plot.select_identities` (seed 0), embedded by
:func:`analysis.embeddings.embed_records` (images from the demo's own feature cache, captions
cached beside them), mapped by :func:`analysis.umap_plot.map_panel` and drawn by
:func:`analysis.umap_plot.umap_panels_figure`, with R@1 and the identity silhouette in the titles.

A map is computed once per (gallery, checkpoint, N) and shared by every visitor (a thread-safe
LRU; a second visitor asking for the same map waits for the first instead of computing it
again); choosing an identity only redraws the figure with that identity highlighted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Optional

import gradio as gr

from analysis.umap_plot import MapPanel, map_panel, select_identities, umap_panels_figure
from demo.context import DemoContext, SharedUI
from demo.markup import text as esc
from demo.search import FEATURE_CACHE, UPPERSON, ZERO_SHOT, QueryError
from demo.views.common import (cache_of, figure_file, hidden_api, in_page, lenient_dropdown, lenient_slider,
                               screen_layout, user_error, view_key)

log = logging.getLogger(__name__)

DEFAULT_IDS = 20
MAX_IDS = 200
SEED = 0  # the CLI's default --seed: the same identities and the same map
MAPS, MAPS_SIZE = "embedding-maps", 8  # (view, n) -> EmbeddingMap, shared by visitors
DRAWINGS, DRAWINGS_SIZE = "embedding-drawings", 64  # (map key, highlighted identity) -> PNG file


@dataclass
class EmbeddingMap:
    """The two panels of one map and the gallery items of the identities shown."""

    panels: list[MapPanel]
    pids: list[int]  # the identities shown, ascending
    items: dict[int, list[int]]  # identity -> indices of its gallery items
    seconds: float  # time it took to compute


def parse_count(value: object, available: int) -> int:
    """``value`` as a whole number of identities from 2 to ``min(MAX_IDS, available)``; else QueryError."""
    top = min(MAX_IDS, available)
    try:
        f = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or not f.is_integer() or not 2 <= f <= MAX_IDS:
        raise QueryError(f"The number of identities must be a whole number from 2 to {top}; got {str(value)[:40]!r}.")
    return min(int(f), available)


def compute_map(ctx: DemoContext, state, n: object) -> tuple[tuple, EmbeddingMap]:
    """(cache key, map) of ``n`` identities of the visitor's gallery (computed once, shared)."""
    from upperson.data import ImageRecord
    from analysis.embeddings import embed_records

    s = ctx.valid_state(state)
    gallery = ctx.gallery(s)
    if not gallery.has_ids:
        raise QueryError("This gallery has no identities (an image folder), so there is nothing to colour the map "
                         "by: load a dataset gallery (restart with the default one) to see the embeddings.")
    if gallery.num_ids < 2:
        raise QueryError("This gallery has a single identity; the map needs at least 2.")
    count = parse_count(n, gallery.num_ids)
    key = (*view_key(ctx, s), count)

    def make() -> EmbeddingMap:
        start = time.perf_counter()
        records = [ImageRecord(it.path, int(it.pid), list(it.captions), i)
                   for i, it in enumerate(gallery.items) if it.pid is not None]
        chosen = select_identities(records, count, SEED)
        cache = ctx.engine.cache_dir / FEATURE_CACHE  # the demo's image features; captions cached beside them
        label = UPPERSON if s.model == ctx.engine.default_checkpoint else f"{UPPERSON} ({s.model})"
        embeddings = []
        for name, variant in (("Zero-shot backbone", ZERO_SHOT), (label, UPPERSON)):
            with ctx.model(s, variant) as model:  # only the forward passes hold the engine's lock
                embeddings.append((name, embed_records(model, ctx.engine.tokenizer, chosen, cache, progress=False)))
        panels = [map_panel(name, emb, SEED) for name, emb in embeddings]
        items: dict[int, list[int]] = {}
        for r in chosen:
            items.setdefault(r.pid, []).append(r.image_id)
        took = time.perf_counter() - start
        log.info("embedding map of %d identities (%s) in %.1f s", len(items), key, took)
        return EmbeddingMap(panels, sorted(items), items, took)

    return key, cache_of(ctx, MAPS, MAPS_SIZE).get_or_make(key, make)


def parse_identity(value: object, emap: EmbeddingMap) -> Optional[int]:
    """None (no highlight) for an empty value, else one of the map's identities; QueryError otherwise."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    text = str(value).strip()
    text = text.split("·")[0].strip().removeprefix("id").strip()
    try:
        f = float(text)
        pid = int(f) if math.isfinite(f) and f.is_integer() else None
    except ValueError:
        pid = None
    if pid is None or pid not in emap.items:
        shown = ", ".join(map(str, emap.pids[:12])) + (" ..." if len(emap.pids) > 12 else "")
        raise QueryError(f"Identity {str(value)[:40]!r} is not on this map; choose one of {shown}.")
    return pid


def draw(ctx: DemoContext, key: tuple, emap: EmbeddingMap, pid: Optional[int]) -> str:
    """The map's figure file (the CLI's figure; ``pid`` highlighted when given)."""
    lay = screen_layout()  # drawn for the visitor's screen (a phone's, or the CLI's figure)
    return cache_of(ctx, DRAWINGS, DRAWINGS_SIZE).get_or_make((key, pid, lay.name), lambda: figure_file(
        ctx, lambda: umap_panels_figure(emap.panels, n_ids=len(emap.pids), highlight=pid, layout=lay)))


def _choices(emap: EmbeddingMap) -> list[tuple[str, str]]:
    return [(f"id {p} · {len(emap.items[p])} image(s)", str(p)) for p in emap.pids]


def identity_view(ctx: DemoContext, state, emap: EmbeddingMap, pid: Optional[int]) -> tuple[list, str]:
    """(thumbnails with names, captions as Markdown) of identity ``pid`` (nothing for None)."""
    if pid is None:
        return [], "*Choose an identity to highlight it and see its images and captions.*"
    gallery = ctx.gallery(state)
    thumbs, lines = [], [f"**Identity {pid}**: {len(emap.items[pid])} image(s)"]
    for i in emap.items[pid]:
        item = gallery.items[i]
        name = gallery.relative_name(item)
        thumbs.append((ctx.files.thumbnail(item.path), name))
        lines.append(f"**{esc(name)}**\n" + "\n".join(f"- {esc(c)}" for c in item.captions))
    return thumbs, "\n\n".join(lines)


def summary(emap: EmbeddingMap) -> str:
    scores = " · ".join(f"{esc(p.label)}: R@1 {p.scores['R1']:.1f} %, silhouette {p.scores['silhouette']:.2f}"
                        for p in emap.panels)
    return f"{len(emap.pids)} identities · {scores} · computed in {emap.seconds:.1f} s (then cached)"


def embeddings(ctx: DemoContext, state, n, identity):
    """(figure, identity choices, thumbnails, captions, summary) -- the ``/embeddings`` action."""
    key, emap = compute_map(ctx, state, n)
    pid = parse_identity(identity, emap)
    thumbs, captions = identity_view(ctx, state, emap, pid)
    return (draw(ctx, key, emap, pid), gr.update(choices=_choices(emap), value=None if pid is None else str(pid)),
            thumbs, captions, summary(emap))


def prepare_in_background(ctx: DemoContext, state) -> None:
    """Start computing the visitor's default map (N = 20) in a background thread, unless it is cached
    or being computed: the first use of UMAP compiles its code (numba), which then overlaps with the
    visitor's reading of the page. A click on *Show the map* waits for it instead of starting anew."""
    import threading

    try:
        key = (*view_key(ctx, state), min(DEFAULT_IDS, ctx.gallery(state).num_ids))
    except QueryError:
        return
    if not ctx.gallery(state).has_ids or key in cache_of(ctx, MAPS, MAPS_SIZE):
        return

    def run() -> None:
        try:
            compute_map(ctx, state, DEFAULT_IDS)
        except Exception as exc:  # the visitor's own click reports any problem
            log.info("background embedding map not made: %s", exc)

    threading.Thread(target=run, name="embeddings-prepare", daemon=True).start()


def build_embeddings_tab(ctx: DemoContext, ui: SharedUI) -> None:
    """The Embeddings tab's components and events (inside ``with gr.Tab(...)``)."""
    from gradio.context import Context

    tab = Context.block  # the tab this is built in: opening it starts the default map
    gr.Markdown("Images (circles) and captions (triangles) of N identities, one colour per identity, mapped by UMAP "
                "for the zero-shot backbone and for UP-Person (the figure `python -m analysis umap` writes). "
                "Computed once per gallery, model and N, then shared; choose an identity to highlight it.")
    with gr.Row():
        n = lenient_slider(2, MAX_IDS, value=DEFAULT_IDS, step=1, label="Identities (N)", elem_id="embeddings-n",
                           scale=2)
        run = gr.Button("Show the map", variant="primary", elem_id="embeddings-run", scale=1)
    info = gr.Markdown(elem_id="embeddings-info", latex_delimiters=[])
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            plot = gr.Image(label="UMAP: zero-shot beside UP-Person", type="filepath", interactive=False,
                           show_label=False, elem_id="embeddings-plot", buttons=["download"])
        with gr.Column(scale=2, min_width=240):
            identity = lenient_dropdown(choices=[], value=None, allow_custom_value=True, label="Identity",
                              elem_id="embeddings-identity")
            # whole thumbnails with their whole names below them (the results grid's style), no label over them
            images = gr.Gallery(label="Its images", show_label=False, columns=4, height="auto", object_fit="contain",
                                allow_preview=False, elem_id="embeddings-images", elem_classes="results-grid")
            captions = gr.Markdown(elem_id="embeddings-captions", latex_delimiters=[])

    def show(identities, identity_id, state):
        """UMAP of N identities of the visitor's gallery (zero-shot and UP-Person), one identity highlighted."""
        try:
            return embeddings(ctx, state, identities, identity_id)
        except QueryError as exc:
            raise user_error(exc) from None

    def select(identities, identity_id, state):
        """An identity was chosen: redraw with it highlighted (only once a map is shown)."""
        try:
            s = ctx.valid_state(state)
            key = (*view_key(ctx, s), parse_count(identities, ctx.gallery(s).num_ids))
        except QueryError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if key not in cache_of(ctx, MAPS, MAPS_SIZE):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return show(identities, identity_id, state)

    outputs = [plot, identity, images, captions, info]
    run.click(in_page(show, 5, 4), [n, identity, ui.state], outputs, api_visibility="private", concurrency_id="engine")
    hidden_api(show, [n, identity, ui.state], outputs, "embeddings")
    n.change(lambda: gr.update(value=None), None, identity, api_visibility="private")  # a new map: no stale choice
    identity.input(in_page(select, 5, 4, clear=False), [n, identity, ui.state], outputs, api_visibility="private",
                   concurrency_id="engine")
    ui.state.change(lambda: (gr.update(choices=[], value=None), [], ""), None, [identity, images, captions],
                    api_visibility="private")
    if isinstance(tab, gr.Tab):
        tab.select(lambda state: prepare_in_background(ctx, ctx.valid_state(state)), [ui.state], None,
                   api_visibility="private", queue=False)
