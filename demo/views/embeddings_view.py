"""The Embeddings tab: a UMAP of N identities' images and captions, zero-shot beside UP-Person.

The same computation and figure as ``python -m analysis umap``: the identities are drawn by
:func:`analysis.umap_plot.select_identities` (seed 0), embedded by
:func:`analysis.embeddings.embed_records` (images from the demo's own feature cache, captions
cached beside them), mapped by :func:`analysis.umap_plot.map_panel` and drawn by
:func:`analysis.umap_plot.umap_panels_figure`, with R@1 and the identity silhouette in the titles.

A map is computed once per (gallery, checkpoint, N) and shared by every visitor (a thread-safe
LRU; a second visitor asking for the same map waits for the first instead of computing it
again); choosing an identity only redraws the figure with that identity highlighted. A computed
map is also kept in the cache folder (:mod:`demo.embeddings_store`, keyed by everything that
decides it), so a restarted app reads it in milliseconds instead of computing it for ~17 s.
Nothing is computed at start (it would compete with the first searches); opening the tab
prepares the default map in the background (read from the cache folder when it is there).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import gradio as gr

from analysis.embeddings import embed_records
from analysis.umap_plot import MapPanel, map_panel, select_identities, umap_2d, umap_panels_figure
from demo.context import DemoContext, SharedUI, VisitorState
from demo.embeddings_store import FOLDER as MAP_FOLDER
from demo.embeddings_store import StoredMap, load_map, map_key, save_map
from demo.markup import text as esc
from demo.search import FEATURE_CACHE, UPPERSON, ZERO_SHOT, GalleryIndex, QueryError
from demo.views.common import (cache_of, figure_file, figure_image, hidden_api, in_page, lenient_dropdown,
                               lenient_slider, screen_layout, user_error, view_key)
from upperson.data import ImageRecord
from upperson.index import model_key

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
    from_disk: bool = False  # read from the cache folder (computed by an earlier run of the app)


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


def stored_map_key(ctx: DemoContext, state: VisitorState, gi: GalleryIndex, chosen: Sequence[ImageRecord],
                   count: int, labels: Sequence[str]) -> Optional[str]:
    """The key of the map's file in the cache (:func:`demo.embeddings_store.map_key`): both models' keys
    (their weights), each shown image's row, content digest, identity and captions, the labels, N, the seed
    and the UMAP parameters. None when the gallery has no content digests (the map is then not kept)."""
    if len(gi.digests) != len(gi.gallery.items):
        return None
    models = []
    for variant in (ZERO_SHOT, UPPERSON):
        with ctx.model(state, variant) as model:
            models.append(model_key(model))
    umap_params = {k: p.default for k, p in inspect.signature(umap_2d).parameters.items()
                   if p.default is not inspect.Parameter.empty}
    return map_key({"models": models, "labels": list(labels), "n": count, "seed": SEED, "umap": umap_params,
                    "records": [[r.image_id, gi.digests[r.image_id], r.pid, list(r.captions)] for r in chosen]})


def compute_map(ctx: DemoContext, state, n: object) -> tuple[tuple, EmbeddingMap]:
    """(cache key, map) of ``n`` identities of the visitor's gallery: computed once and shared, and kept in
    the cache folder, from which a restarted app reads it instead of computing it again."""
    s = ctx.valid_state(state)
    gi = ctx.gallery_index(s)
    gallery = gi.gallery
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
        variants = (("Zero-shot backbone", ZERO_SHOT), (label, UPPERSON))
        stored_key = stored_map_key(ctx, s, gi, chosen, count, [name for name, _ in variants])
        folder = ctx.engine.cache_dir / MAP_FOLDER
        stored = None if stored_key is None else load_map(folder, stored_key)
        if stored is not None:
            log.info("embedding map of %d identities (%s) read from %s", len(stored.items), key, folder)
            return EmbeddingMap(stored.panels, sorted(stored.items), stored.items, stored.seconds, from_disk=True)
        embeddings = []
        for name, variant in variants:
            with ctx.model(s, variant) as model:  # only the forward passes hold the engine's lock
                embeddings.append((name, embed_records(model, ctx.engine.tokenizer, chosen, cache, progress=False)))
        panels = [map_panel(name, emb, SEED) for name, emb in embeddings]
        items: dict[int, list[int]] = {}
        for r in chosen:
            items.setdefault(r.pid, []).append(r.image_id)
        took = time.perf_counter() - start
        log.info("embedding map of %d identities (%s) in %.1f s", len(items), key, took)
        if stored_key is not None:
            try:
                save_map(folder, stored_key, StoredMap(panels, items, took))
            except OSError as exc:  # a full or read-only cache: the map is shown, only not kept for a restart
                log.warning("embedding map not kept in %s (%s); a restart computes it again", folder, exc)
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
    """The line above the map: what is behind the numbers (identities, images, captions), what the R@1
    is computed over, each panel's scores, and how the map was made."""
    emb = emap.panels[0].emb
    n_img, n_txt = len(emb.image_pids), len(emb.text_pids)
    scores = " · ".join(f"{esc(p.label)}: R@1 {p.scores['R1']:.1f} %, silhouette {p.scores['silhouette']:.2f}"
                        for p in emap.panels)
    took = (f"read from the cache (computed in {emap.seconds:.1f} s by an earlier run)" if emap.from_disk
            else f"computed in {emap.seconds:.1f} s (then cached)")
    return (f"{len(emap.pids)} identities: {n_img} images, {n_txt} captions (text-to-image R@1 over the {n_txt} "
            f"captions, each ranking these {n_img} images; silhouette of the identity clusters, -1 to 1) · "
            f"{scores} · {took}")


def embeddings(ctx: DemoContext, state, n, identity):
    """(figure, identity choices, thumbnails, captions, summary) -- the ``/embeddings`` action."""
    key, emap = compute_map(ctx, state, n)
    pid = parse_identity(identity, emap)
    thumbs, captions = identity_view(ctx, state, emap, pid)
    return (draw(ctx, key, emap, pid), gr.update(choices=_choices(emap), value=None if pid is None else str(pid)),
            thumbs, captions, summary(emap))


SWITCHED = "The gallery or model changed: **Show the map** to map this one."


def after_switch(shown: object = None) -> tuple:
    """The view's outputs once the visitor switched gallery or model: the old map, its identities and
    its numbers cleared (they described the previous view), and, when a map was ``shown``, a line
    saying what to do."""
    return None, gr.update(choices=[], value=None), [], "", SWITCHED if shown else ""


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
            plot = figure_image("UMAP: zero-shot beside UP-Person", "embeddings-plot")
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
    ui.state.change(after_switch, [plot], outputs, api_visibility="private")  # no map of the old view stays
    if isinstance(tab, gr.Tab):
        tab.select(lambda state: prepare_in_background(ctx, ctx.valid_state(state)), [ui.state], None,
                   api_visibility="private", queue=False)
