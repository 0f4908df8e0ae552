"""The Gradio app: seven views in three tabs (Search; Explore: Attention, Embeddings; Studies: Ablation,
Transfer, Budget, Probe; :mod:`demo.tabs`) over one shared engine.

Every event has an ``api_name``, so everything the page does can be done with
``gradio_client``: ``/search``, ``/explain``, ``/explain_query``, ``/set_model``, ``/set_gallery``, ``/info``
(and the views' ``/attention``, ``/embeddings``, ``/ablation``, ``/transfer``, ``/transfer_cell``,
``/budget``, ``/budget_point``, ``/probe``).

Each visitor (browser session, or ``gradio_client.Client``) has its own gallery and model
choice in a ``gr.State`` (:class:`demo.context.VisitorState`); the engine, its indexed
galleries and their features are shared (:class:`demo.context.DemoContext`). The functions
take gallery *names* (as the results show them), never arbitrary paths. Every user-controlled
string shown as Markdown goes through :func:`demo.markup.text`.

**What is served.** An allow-list, never a folder: the files the app made and decided to show
(thumbnails of gallery images, heat maps, figures: :class:`demo.thumbs.ImageFiles`), and what
Gradio itself keeps in its own upload folder (a visitor's upload, shown back to them). Gradio's
``allowed_paths`` serve whole folders and check a path when the request comes but through
``Path.resolve`` of the request alone; instead :class:`FileRouteGuard` sits in front of Gradio's
file routes (``/gradio_api/file=...``, ``/gradio_api/file/...``) and, for every request,
resolves the path (realpath, now) and answers 403 unless it is one of those files. Original
gallery images are never served (their thumbnails are), and an image is read to make its
thumbnail only if it resolves inside the allowed roots at that moment (the data root's folder,
the ``--gallery`` folder, ``--allow-root``), so a symlink swapped in after indexing shows a grey
placeholder and a notice, not the file it points to. The check costs a ``realpath`` per request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import re
import weakref
from pathlib import Path
from typing import Optional, Sequence, TypedDict

import gradio as gr
from PIL import Image, UnidentifiedImageError
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from demo.context import DemoContext, SharedUI, VisitorState
from demo.gallery import DEFAULT_CHOICE, GalleryError, domain_label, domain_ready
from demo.markup import text as esc
from demo.query_explain import draw_panel, explanation_json, explanation_markdown, no_query_text
from demo.gallery import Gallery
from demo.search import UPPERSON, ZERO_SHOT, ImageQuery, QueryError, SearchEngine, SearchResult
from demo.tabs import TAB_GROUPS, view_keys, view_label
from demo.thumbs import ImageFiles, OutsideRoots, WriteError, real, within
from demo.views.common import WIDTH_COOKIE
from upperson.data.toypedes.domains import DOMAINS

log = logging.getLogger(__name__)


class LastQuery(TypedDict):
    """A visitor's last search, as "Why it matched" explains it (kept in a ``gr.State``)."""

    kind: str  # "text" or "image"
    text: str  # the text searched (cleaned and truncated); "" after an image search

TITLE = "UP-Person: text-based person retrieval"
TOP_K_MAX = 200
TAB_LABELS = tuple(view_label(k) for k in view_keys())  # the seven views (grouped in three tabs: demo.tabs)
# The result grids adapt to their own width (CSS container queries): 8 columns on a desktop,
# fewer on a tablet or beside the zero-shot grid, 3 on a phone; each caption sits below its image
# and wraps instead of being cut (Gradio's default overlays it on the image, one line, ellipsis).
CSS = """
#status {min-height: 2.5em}
"""
# Gradio's css= drops @container rules, so the grid's rules go into the page's <head> (launch(head=...)).
HEAD_CSS = """<style>
/* a phone: each tab bar's labels (three groups; at most four views in a group) fit one row (Gradio moves
   what does not fit behind a "⋯" menu) */
@media (max-width: 480px) {#tabs .tab-container button {padding: 6px 7px !important; font-size: 13px !important}
  #tabs .tab-wrapper {padding-left: 0 !important}}
.api-only {display: none !important}
/* a figure's download button in a row above it (Gradio floats it over the image's top-right corner, where
   the figure's title is): demo.views.common.figure_image */
.figure .icon-button-wrapper.top-panel {position: static !important; display: flex !important;
  justify-content: flex-end; margin: 0 0 2px 0 !important}
/* the ablation table: every column on a wide screen; on a phone one card per variant (no sideways scrolling) */
@media (max-width: 480px) {#ablation-table {display: none !important}}
@media (min-width: 481px) {#ablation-cards {display: none !important}}
#ablation-cards .ablation-card {border-bottom: 1px solid var(--border-color-primary); padding: 6px 0; overflow-wrap: anywhere}
#ablation-cards .ablation-card dl {display: flex; flex-wrap: wrap; gap: 2px 14px; margin: 2px 0 0 0}
#ablation-cards .ablation-card dl div {display: flex}
#ablation-cards .ablation-card dt {font-weight: 600}
#ablation-cards .ablation-card dd {margin: 0 0 0 4px; font-variant-numeric: tabular-nums}
#embeddings-images .caption-label {font-size: 12px !important; overflow-wrap: normal !important; word-break: normal !important}
.results-grid {container-type: inline-size}
.results-grid .gallery-container .grid-wrap {overflow-y: visible !important; height: auto !important; max-height: none !important}
.results-grid .grid-wrap .grid-container {grid-template-columns: repeat(2, minmax(0, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important}
@container (min-width: 280px) {.results-grid .grid-wrap .grid-container {grid-template-columns: repeat(3, minmax(0, 1fr)) !important}}
@container (min-width: 440px) {.results-grid .grid-wrap .grid-container {grid-template-columns: repeat(4, minmax(0, 1fr)) !important}}
@container (min-width: 620px) {.results-grid .grid-wrap .grid-container {grid-template-columns: repeat(6, minmax(0, 1fr)) !important}}
@container (min-width: 820px) {.results-grid .grid-wrap .grid-container {grid-template-columns: repeat(8, minmax(0, 1fr)) !important}}
.results-grid .grid-container .gallery-item {height: auto !important}
.results-grid .gallery-item .thumbnail-item {aspect-ratio: auto !important; height: auto !important; display: flex !important;
  flex-direction: column; align-items: stretch}
.results-grid .thumbnail-item img {height: 150px !important; width: 100% !important; object-fit: contain}
.results-grid .thumbnail-item .caption-label {position: static !important; max-width: 100% !important; white-space: normal !important;
  overflow: visible !important; text-overflow: clip !important; border: none !important; border-radius: 0 !important;
  font-variant-numeric: tabular-nums; overflow-wrap: anywhere; opacity: 1 !important}
</style>
"""
# The window's width in a cookie, so that figures are drawn for it (demo.views.common.screen_layout).
HEAD_SCRIPT = """<script>
(() => { const put = () => { document.cookie = "%s=" + Math.round(window.innerWidth) + "; path=/; SameSite=Strict"; };
  put(); window.addEventListener("resize", put); })();
</script>
""" % WIDTH_COOKIE


def _caption(h) -> str:
    mark = "" if h.relevant is None else ("✓ " if h.relevant else "✗ ")
    pid = "" if h.pid is None else f" · id {h.pid}"
    return f"{mark}#{h.rank} · {h.score:.3f}{pid} · {h.file}"


def lenient(component: gr.components.Component, description: str) -> gr.components.Component:
    """``component`` with its input check left to the event function, which explains a bad value.

    Gradio's own check answers a bad API value (``'abc'`` for a slider) with a bare "upstream
    exception"; the function instead says what to type. Set on the instance: a subclass of a
    Gradio component would make Gradio write a ``.pyi`` file beside this module.
    """
    component.preprocess = lambda payload: payload  # type: ignore[method-assign]
    info = {**component.api_info(), "description": description}
    component.api_info = lambda: info  # type: ignore[method-assign]
    return component


def parse_top_k(value: object) -> int:
    """``value`` as a whole number from 1 to TOP_K_MAX, else QueryError with what to type."""
    try:
        f = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or not f.is_integer() or not 1 <= f <= TOP_K_MAX:
        shown = str(value)[:40]
        raise QueryError(f"Top k must be a whole number from 1 to {TOP_K_MAX}; got {shown!r}.")
    return int(f)


def parse_flag(value: object, name: str) -> bool:
    """A checkbox value: True/False (or "true"/"false", 0/1), else QueryError."""
    if isinstance(value, bool):
        return value
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise QueryError(f"{name} must be true or false; got {str(value)[:40]!r}.")


def _thumbnail(files: ImageFiles, name: str, path: Path, relevant: Optional[bool], notices: list[str]) -> str:
    """The result's thumbnail (of ``path``, the hit's own file from its snapshot); a grey placeholder
    (and a notice) when that file cannot be shown now."""
    try:
        return files.thumbnail(path, relevant)
    except OutsideRoots:
        why = "it resolves outside the allowed folders now"
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        if isinstance(exc, WriteError):
            raise
        why = f"it cannot be read now ({type(exc).__name__})"
    log.warning("result %s not shown: %s", name, why)
    notices.append(f"{name}: not shown, {why}.")
    return files.placeholder()


def _gallery_value(engine: SearchEngine, gallery_key: str, ranking, files: ImageFiles,
                   notices: Optional[list[str]] = None) -> list[tuple[str, str]]:
    """(thumbnail file, caption) pairs; images of a known-identity query get a green or red frame.

    A result whose file cannot be shown gets a placeholder and a line in ``notices``.
    """
    gallery = engine.gallery_index(gallery_key).gallery
    notices = [] if notices is None else notices
    return [(_thumbnail(files, h.file, h.path or gallery.items[h.item].path, h.relevant, notices), _caption(h))
            for h in ranking.hits]


def _status(result: SearchResult, gallery: str) -> str:
    """The query, its identity's scores (each named, with its unit and what it is computed on) and notices."""
    lines = [f"**Query:** {esc(result.query)}"] if result.query else []
    if result.target_pid is not None:
        src = {"caption": "the query is one of its captions", "image": "the identity of the query image"}.get(
            result.target_source, "given by you")
        lines.append(f"**Identity {result.target_pid}** ({src}); ✓ marks its images.")
        for r in result.rankings:
            m = r.metrics or {}
            n, rel = m.get("gallery"), m.get("relevant")
            lines.append(f"- {r.variant}: R@1 **{m.get('R1', 0):.0f}%** (100% when the first result is this "
                         f"identity) · AP **{m.get('AP', 0):.1f}%** (average precision: 100% when all {rel} "
                         f"image(s) of this identity come first) · its first image at rank **{m.get('first_match')}** "
                         f"of {n}")
        lines.append(f"Scores of this one query on the gallery *{esc(gallery)}*, not a benchmark figure "
                     "(those average over every query of a test split).")
    for n in result.notices:
        lines.append(f"> ⚠️ {esc(n)}")
    return "\n\n".join(lines)


GENERIC_EXAMPLES = ("a woman in a red coat with a black backpack", "a man wearing a blue jacket and grey trousers",
                    "a person in a white shirt and black shorts carrying a bag")


def example_queries(gallery: Gallery, n: int = 8) -> tuple[list[str], str]:
    """(example queries, their label): the first caption of each of the gallery's first images, or generic
    descriptions (said so) for a gallery without captions."""
    captions = [c for it in gallery.items for c in it.captions[:1]][:n]
    if captions:
        return captions, "Example queries (captions of this gallery; click one to search)"
    return list(GENERIC_EXAMPLES), "Example queries (this gallery has no captions: generic descriptions; click to search)"


def _results_json(result: SearchResult) -> dict:
    return {
        "query": result.query,
        "notices": result.notices,
        "target_pid": result.target_pid,
        "rankings": [
            {"model": r.variant, "metrics": r.metrics,
             "hits": [{"rank": h.rank, "file": h.file, "score": round(h.score, 6), "pid": h.pid,
                       "relevant": h.relevant} for h in r.hits]}
            for r in result.rankings
        ],
    }


def _view_module(name: str):
    """``demo.views.<name>_view`` if it exists (helper 11B's views), else None."""
    module = f"demo.views.{name}_view"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name in (module, "demo.views"):
            return None
        raise


def _placeholder(label: str) -> None:
    gr.Markdown(f"*The {label} view is not installed in this build.*")


FILE_ROUTE = re.compile(r"^/gradio_api/file(?:=|/)(.*)$", re.S)  # Gradio's two file routes (routes.py)
_SERVED: "weakref.WeakKeyDictionary[gr.Blocks, ImageFiles]" = weakref.WeakKeyDictionary()


def served_files(app: gr.Blocks) -> Optional[ImageFiles]:
    """The image folder whose files ``app`` serves (made by :func:`build_app`); None for any other app,
    which then serves no file of ours."""
    return _SERVED.get(app)


def file_route_target(scope: dict) -> Optional[str]:
    """The path a request to one of Gradio's file routes asks for (None for any other request)."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    m = FILE_ROUTE.match(path)
    return m.group(1) if m else None


class FileRouteGuard:
    """ASGI middleware: a request to a file route is answered 403 unless the path resolves, now, to a
    file the app made (``files.may_serve``) or to a file in Gradio's own upload folder (``gradio_cache``)."""

    def __init__(self, app, files: Optional[ImageFiles], gradio_cache: str) -> None:
        self.app = app
        self.files = files
        self.gradio_cache = real(gradio_cache)

    def allowed(self, target: str) -> bool:
        if not target or "\x00" in target or "://" in target or target.startswith(("http:", "https:", "data:")):
            return False
        if self.files is not None and self.files.may_serve(target):
            return True
        p = real(target)
        return p != self.gradio_cache and within(p, [self.gradio_cache]) and os.path.isfile(p)

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") == "http":
            target = file_route_target(scope)
            if target is not None and not self.allowed(target):
                log.info("file route: refused %s", target[:200])
                await PlainTextResponse("File not allowed.", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(engine: SearchEngine, *, allow_roots: Sequence[Path] = (), default_top_k: int = 20,
              examples: Optional[list[str]] = None, studies: Sequence[Path] = ()) -> gr.Blocks:
    """The Blocks app around ``engine`` (shared by every visitor; each keeps its own view state).

    ``studies``: folders the Studies views may read besides the shipped ones (``--studies``;
    :mod:`demo.views.study_files`)."""
    ctx = DemoContext(engine, allow_roots=allow_roots, default_top_k=default_top_k, study_roots=studies)
    files = ctx.files
    # images are read (to be thumbnailed) only inside these: the start-up gallery's own folders
    # (a dataset's data root folder, or the --gallery folder) and the --allow-root folders
    files.allow_sources([*engine.gallery.source_roots, *ctx.allow_roots])
    # our generated images (content-addressed, never modified) are served from their folder as
    # they are: Gradio neither hashes nor copies each result image into its cache per request
    gr.set_static_paths([files.dir])
    files.warm([it.path for it in engine.gallery.items])  # thumbnails ready before they are asked for
    fixed_examples = list(examples or [])

    def examples_of(state: Optional[VisitorState]) -> tuple[list[str], str]:
        """The example queries shown for the visitor's gallery (``examples`` when given)."""
        if fixed_examples:
            return fixed_examples, "Example queries (click one to search)"
        return example_queries(engine.gallery_index(ctx.valid_state(state).gallery).gallery)

    def info(state: VisitorState) -> dict:
        s = ctx.valid_state(state)
        gi = engine.gallery_index(s.gallery)
        g = gi.gallery
        return {"gallery": g.name, "images": len(g), "identities": g.num_ids,
                "skipped": [[p.name, why] for p, why in gi.skipped],
                "model": engine.model.config.name, "checkpoint": s.model,
                "checkpoints": list(engine.checkpoints), "allowed_roots": [str(r) for r in ctx.allow_roots]}

    def header(state: Optional[VisitorState]) -> str:
        s = ctx.valid_state(state)
        gi = engine.gallery_index(s.gallery)
        g = gi.gallery
        ids = f", {g.num_ids} identities" if g.has_ids else ""
        skipped = f" · {len(gi.skipped)} file(s) skipped (see log)" if gi.skipped else ""
        return (f"**Gallery:** {esc(g.name)}: {len(g)} images{ids}{skipped} · **Model:** {esc(engine.model.config.name)}, "
                f"PETL weights *{esc(s.model)}*")

    def on_load(state: VisitorState):
        s = ctx.valid_state(state)
        return s, header(s), gr.Dropdown(value=s.model)

    def answer(run, top_k, compare, state: VisitorState, kind: str = "text"):
        """The outputs of one search: ``run(k, variants, state)`` gives the SearchResult; the last one is
        the query "Why it matched" explains (:data:`LastQuery`: the text searched, or an image search)."""
        s = ctx.valid_state(state)
        try:
            s = ctx.check_state(state)
            k = parse_top_k(top_k)
            both = parse_flag(compare, "Compare")
            result = run(k, (UPPERSON, ZERO_SHOT) if both else (UPPERSON,), s)
        except QueryError as exc:
            return [], gr.Gallery(value=[], visible=False), f"ℹ️ {esc(exc)}", {"error": str(exc)}, [], [], None
        main = result.rankings[0]
        zs = result.rankings[1] if both else None
        names = [h.file for h in main.hits]
        zs_names = [h.file for h in zs.hits] if zs else []
        shown: list[str] = []
        try:
            pictures = _gallery_value(engine, s.gallery, main, files, shown)
            zs_pictures = _gallery_value(engine, s.gallery, zs, files, shown) if zs else []
        except WriteError as exc:
            log.error("%s", exc)
            return [], gr.Gallery(value=[], visible=False), f"⚠️ {esc(exc)}", {"error": str(exc)}, [], [], None
        result.notices.extend(dict.fromkeys(shown))
        gallery_name = engine.gallery_index(s.gallery).gallery.name
        return (pictures, gr.Gallery(value=zs_pictures, visible=bool(zs)),
                _status(result, gallery_name), _results_json(result), names, zs_names,
                {"kind": kind, "text": result.query if kind == "text" else ""})

    def search(query: str, pid: str, top_k, compare, state: VisitorState):
        """Rank the visitor's gallery for a description (and, with compare, by the zero-shot backbone too)."""
        def run(k, variants, s):
            if query is not None and not isinstance(query, str):
                raise QueryError(f"The description must be text; got {type(query).__name__}.")
            if pid is not None and not isinstance(pid, (str, int, float)):
                raise QueryError(f"The person id must be a whole number or empty; got {type(pid).__name__}.")
            return engine.search(query, k, pid=pid, variants=variants, gallery=s.gallery, checkpoint=s.model)

        return answer(run, top_k, compare, state)

    def search_image(image, top_k, compare, state: VisitorState):
        """Rank the visitor's gallery for an uploaded image (the same person, by the image towers' features)."""
        def run(k, variants, s):
            if image is not None and not isinstance(image, str):
                raise QueryError("Upload an image file.")
            if not image:
                raise QueryError("Upload an image, or click a result and choose \"Find this person\".")
            return engine.search_image(ImageQuery(path=Path(image)), k, variants=variants, gallery=s.gallery,
                                       checkpoint=s.model)

        return answer(run, top_k, compare, state, "image")

    def find_person(name: str, top_k, compare, state: VisitorState):
        """Rank the visitor's gallery for one of its images (by the name the results show), itself left out."""
        def run(k, variants, s):
            if name is not None and not isinstance(name, str):
                raise QueryError(f"The image name must be text (as the results show it); got {type(name).__name__}.")
            if not name or not str(name).strip():
                raise QueryError("Click a result first (or type its name), then choose \"Find this person\".")
            return engine.search_image(ImageQuery(name=str(name).strip()), k, variants=variants, gallery=s.gallery,
                                       checkpoint=s.model)

        return answer(run, top_k, compare, state, "image")

    def examples_api(state: VisitorState) -> dict:
        """The example queries shown for the visitor's gallery, and their label."""
        queries, label = examples_of(state)
        return {"label": label, "queries": queries}

    def examples_update(state: VisitorState):
        queries, label = examples_of(state)
        return gr.Dataset(samples=[[q] for q in queries], label=label)

    def use_example(value) -> str:
        return value[0] if isinstance(value, (list, tuple)) and value else str(value or "")

    def explain(name: str, state: VisitorState):
        """The UP-Person prefix-attention heatmap and the captions of one gallery image (by its name)."""
        from demo.heatmap import overlay

        s = ctx.valid_state(state)
        try:
            s = ctx.check_state(state)
            if name is not None and not isinstance(name, str):
                raise QueryError(f"The image name must be text (as the results show it); got {type(name).__name__}.")
            files.check_source(ctx.item(s, name)[1].path)  # resolves inside the allowed folders now
            image, heat, item = engine.explain(name, gallery=s.gallery, checkpoint=s.model)
        except QueryError as exc:
            return None, f"ℹ️ {esc(exc)}"
        except OutsideRoots:
            return None, f"⚠️ {esc(name)}: not shown, it resolves outside the allowed folders now."
        except OSError as exc:  # removed or unreadable since it was indexed
            log.warning("explain %s: %s", name, exc)
            return None, f"⚠️ {esc(name)}: cannot be read now ({esc(type(exc).__name__)}); search again."
        gallery = engine.gallery_index(s.gallery).gallery
        height = 384
        base = image.resize((max(1, round(image.width * height / image.height)), height), Image.BILINEAR)
        if heat is None:
            panel, note = base, "This model has no prefix: no prefix attention to show."
        else:
            over = overlay(image, heat, height=height)
            panel = Image.new("RGB", (base.width * 2 + 8, height), (255, 255, 255))
            panel.paste(base, (0, 0))
            panel.paste(over, (base.width + 8, 0))
            note = ("Right: each patch's attention to UP-Person's learned prefix (mass on the prefix keys × λ, "
                    f"mean over heads and layers; brighter = more); range {heat.min():.3g} to {heat.max():.3g}.")
        lines = [f"**{esc(gallery.relative_name(item))}**" + (f" · id {item.pid}" if item.pid is not None else ""),
                 note]
        if item.captions:
            lines.append("**Captions:**\n" + "\n".join(f"- {esc(c)}" for c in item.captions))
        key = f"heat:{item.path}:{s.model}:{heat.tobytes().hex() if heat is not None else ''}"
        try:
            return files.save(panel, key), "\n\n".join(lines)
        except WriteError as exc:
            log.error("%s", exc)
            return None, f"⚠️ {esc(exc)}"

    def explain_query(name: str, query: str, state: VisitorState):
        """Which words of ``query`` matched which regions of one gallery image (UP-Person, the visitor's
        checkpoint): the panel, its Markdown and its numbers (JSON)."""
        return explain_tied(name, query, state)

    def explain_tied(name: str, query: str, state: VisitorState, from_zero_shot: bool = False,
                     no_text: Optional[str] = None):
        """:func:`explain_query`; ``from_zero_shot``: picked from the zero-shot grid (said so); ``no_text``:
        why there is no query ("image": an image search)."""
        s = ctx.valid_state(state)
        try:
            s = ctx.check_state(state)
            if name is not None and not isinstance(name, str):
                raise QueryError(f"The image name must be text (as the results show it); got {type(name).__name__}.")
            if query is not None and not isinstance(query, str):
                raise QueryError(f"The query must be text; got {type(query).__name__}.")
            files.check_source(ctx.item(s, name)[1].path)  # a name outside the gallery is refused first
            if not (query or "").strip():  # the JSON says why too: an API client gets a reason, not {}
                why = "an image search" if no_text == "image" else "no query given"
                return None, no_query_text(no_text), {"error": f"no query text to explain ({why})"}
            qe = engine.explain_query(name, query, gallery=s.gallery, checkpoint=s.model)
        except QueryError as exc:
            return None, f"ℹ️ {esc(exc)}", {"error": str(exc)}
        except OutsideRoots:
            why = f"{name}: not shown, it resolves outside the allowed folders now."
            return None, f"⚠️ {esc(why)}", {"error": why}
        except OSError as exc:  # removed or unreadable since it was indexed
            log.warning("explain_query %s: %s", name, exc)
            why = f"{name}: cannot be read now ({type(exc).__name__}); search again."
            return None, f"⚠️ {esc(why)}", {"error": why}
        numbers = explanation_json(qe, name, s.model)
        key = "query-explain:" + hashlib.sha1(json.dumps([str(qe.item.path), numbers["similarity"],
                                                          numbers["patch_map"], numbers["word_maps"]]).encode()
                                              ).hexdigest()
        try:
            path = files.save(draw_panel(qe), key)
        except WriteError as exc:
            log.error("%s", exc)
            return None, f"⚠️ {esc(exc)}", numbers
        return path, explanation_markdown(qe, s.model, from_zero_shot=from_zero_shot), numbers

    def tied_to_last(name: str, last: Optional[LastQuery], state: VisitorState, from_zero_shot: bool):
        """:func:`explain_query` on the visitor's last search: its text, or nothing after an image search."""
        last = last if isinstance(last, dict) else {}
        return explain_tied(name, last.get("text") or "", state, from_zero_shot, last.get("kind"))

    def explain_last(name: str, last: Optional[LastQuery], state: VisitorState):
        return tied_to_last(name, last, state, False)

    def explain_last_zero_shot(name: str, last: Optional[LastQuery], state: VisitorState):
        return tied_to_last(name, last, state, True)

    def pick(names: list[str], evt: gr.SelectData) -> str:
        return names[evt.index] if names and 0 <= evt.index < len(names) else ""

    def set_model(name: str, state: VisitorState):
        """Use another PETL checkpoint of the loaded backbone (for this visitor only)."""
        s = ctx.valid_state(state)
        try:
            if not isinstance(name, str):
                raise QueryError(f"choose a checkpoint by name: {', '.join(engine.checkpoints)}")
            s = ctx.with_model(s, name)
        except Exception as exc:  # QueryError, CheckpointMismatchError, missing file, ...
            log.warning("cannot load checkpoint %s: %s", name, exc)
            return f"⚠️ {esc(exc)}", header(s), s
        return f"Loaded PETL weights *{esc(name)}*.", header(s), s

    def set_gallery(folder: str, state: VisitorState):
        """Index a folder under an allowed root and make it this visitor's gallery."""
        s = ctx.valid_state(state)
        try:
            if folder is not None and not isinstance(folder, str):
                raise GalleryError(f"the folder must be text; got {type(folder).__name__}")
            s = ctx.with_folder(s, folder)
        except (GalleryError, QueryError) as exc:
            return f"⚠️ {esc(exc)}", header(s), s
        gi = engine.gallery_index(s.gallery)
        skipped = f"; {len(gi.skipped)} file(s) skipped: " + ", ".join(
            esc(p.name) for p, _ in gi.skipped[:10]) if gi.skipped else ""
        return f"Indexed {esc(gi.gallery.roots[0])}: {len(gi.gallery)} images{skipped}.", header(s), s

    def pick_gallery(choice: str, state: VisitorState):
        """Make the chosen gallery of the picker this visitor's: the default, or a ToyPEDES domain's test
        split (generated into the cache on its first pick, with a notice)."""
        s = ctx.valid_state(state)
        if choice == DEFAULT_CHOICE:
            return reset_gallery(s)
        try:
            if not isinstance(choice, str) or choice not in DOMAINS:
                raise GalleryError(f"choose a gallery: {', '.join([DEFAULT_CHOICE, *DOMAINS])}")
            if ctx.domain_key(choice) not in engine.galleries and not domain_ready(choice):
                gr.Info(f"Generating the {domain_label(choice)} gallery once (a few seconds); later picks reuse it.")
            s = ctx.with_domain(s, choice)
        except (GalleryError, QueryError) as exc:
            log.warning("gallery %r: %s", choice, exc)
            return f"⚠️ {esc(exc)}", header(s), s
        gi = engine.gallery_index(s.gallery)
        return (f"On the gallery {esc(gi.gallery.name)}: {len(gi.gallery)} images, {gi.gallery.num_ids} identities.",
                header(s), s)

    def picked(state: VisitorState) -> str:
        """The picker's value for the visitor's gallery (a domain's, else the default: a folder is named in
        the header)."""
        key = ctx.valid_state(state).gallery
        return next((d for d in DOMAINS if key == ctx.domain_key(d)), DEFAULT_CHOICE)

    def reset_gallery(state: VisitorState):
        """Back to the gallery the app started with (for this visitor only)."""
        s = dataclasses.replace(ctx.valid_state(state), gallery=engine.default_gallery)
        name = engine.gallery_index(s.gallery).gallery.name
        return f"Back on the default gallery, {esc(name)}.", header(s), s

    with gr.Blocks(title="UP-Person demo") as app:
        state = gr.State(ctx.new_state())
        gr.Markdown(f"# {TITLE}\nDescribe a pedestrian; the gallery is ranked by a frozen CLIP with "
                    "UP-Person's prefix, LoRA and adapters. Click a result to see why it matched.")
        head = gr.Markdown(header(None), elem_id="header")
        with gr.Accordion("Model and gallery (yours only)", open=False):
            with gr.Row():
                ckpt = gr.Dropdown(list(engine.checkpoints), value=engine.default_checkpoint, label="PETL checkpoint",
                                   elem_id="checkpoint")
                load = gr.Button("Load weights", elem_id="load-weights")
            gallery_pick = gr.Dropdown(
                [(f"Default: {engine.gallery.name}", DEFAULT_CHOICE)] + [(domain_label(d), d) for d in DOMAINS],
                value=DEFAULT_CHOICE, label="Gallery (a ToyPEDES domain's test split is generated on its first pick)",
                elem_id="gallery-pick")
            with gr.Row():
                folder = gr.Textbox(label="Image folder" + (f" (under {', '.join(map(str, ctx.allow_roots))})"
                                                            if ctx.allow_roots else " (off: start with --allow-root DIR)"),
                                    interactive=bool(ctx.allow_roots), elem_id="folder")
                index = gr.Button("Index folder", interactive=bool(ctx.allow_roots), elem_id="index-folder")
                reset = gr.Button("Back to the default gallery", elem_id="reset-gallery")
            admin = gr.Markdown(elem_id="admin")
            info_btn = gr.Button("Show info", size="sm")
            info_json = gr.JSON()

        with gr.Tabs(elem_id="tabs") as tabs:
            # --- search tab (this file) ---
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                with gr.Row():
                    with gr.Column(scale=4, min_width=240):
                        query = gr.Textbox(label="Description (Enter searches, Shift+Enter adds a line)", lines=1,
                                           max_lines=4, max_length=4000, elem_id="query",
                                           placeholder="a woman in a red coat with a black backpack")
                    with gr.Column(scale=1, min_width=180):
                        pid = gr.Textbox(label="Person id (optional)", placeholder="to score the query", elem_id="pid")
                        # from 0: the page clamps a typed value to the minimum and would search 0 as 1 silently;
                        # 0 reaches parse_top_k, which says what to type
                        top_k = lenient(gr.Slider(0, TOP_K_MAX, value=default_top_k, step=1, label="Top k",
                                                  elem_id="topk"), f"whole number from 1 to {TOP_K_MAX}")
                        compare = lenient(gr.Checkbox(label="Compare with zero-shot CLIP", value=False,
                                                      elem_id="compare"), "true or false")
                go = gr.Button("Search", variant="primary", elem_id="search")
                first_examples, first_label = examples_of(None)
                example_set = gr.Dataset(components=[query], samples=[[e] for e in first_examples], label=first_label,
                                         elem_id="examples", samples_per_page=8)
                with gr.Accordion("Search by image (the same person)", open=False, elem_id="by-image"):
                    with gr.Row():
                        upload = gr.Image(label="An image of a person", type="filepath", sources=["upload"],
                                          height=220, elem_id="upload")
                        go_image = gr.Button("Search by this image", elem_id="search-image")
                status = gr.Markdown(elem_id="status", latex_delimiters=[])
                names, zs_names = gr.State([]), gr.State([])
                last_query = gr.State(None)  # LastQuery of this visitor's last search (None before any)
                with gr.Row():
                    results = gr.Gallery(label=f"{UPPERSON}", columns=8, height="auto", object_fit="contain",
                                         elem_id="results", elem_classes="results-grid", allow_preview=False,
                                         min_width=160)
                    zs_results = gr.Gallery(label=ZERO_SHOT, columns=8, height="auto", object_fit="contain",
                                            visible=False, elem_id="zs-results", elem_classes="results-grid",
                                            allow_preview=False, min_width=160)
                with gr.Accordion("Why it matched", open=True):
                    with gr.Row():
                        selected = gr.Textbox(label="Selected image (click a result, or type its name)",
                                              elem_id="selected", scale=1)
                        find = gr.Button("Find this person", elem_id="find-person", scale=0, min_width=160)
                    with gr.Row():
                        heat = gr.Image(label="Prefix attention (the same for every query)", type="filepath",
                                        height=400, elem_id="heatmap", scale=1)
                        query_heat = gr.Image(label="Tied to the query: which words matched which regions",
                                              type="filepath", height=400, elem_id="query-heatmap", scale=2)
                    with gr.Row():
                        about = gr.Markdown(elem_id="about", latex_delimiters=[])
                        query_about = gr.Markdown(elem_id="query-about", latex_delimiters=[])
                    with gr.Accordion("The query-tied explanation as JSON", open=False):
                        query_numbers = gr.JSON(elem_id="query-json")
                with gr.Accordion("Results as JSON", open=False):
                    table = gr.JSON()

            ui = SharedUI(state=state, selected=selected, header=head, tabs=tabs)
            for group in TAB_GROUPS[1:]:  # Explore, Studies: a tab each, holding its views' tabs (demo.tabs)
                with gr.Tab(group.label, id=group.key, elem_id=f"tab-{group.key}"):
                    with gr.Tabs(elem_id=f"tabs-{group.key}"):
                        for key, label in group.views:
                            module = _view_module(key)
                            with gr.Tab(label, id=key, elem_id=f"tab-{key}"):
                                # demo/views/<key>_view.py: build_<key>_tab(ctx, ui)
                                if module is None:
                                    _placeholder(label)
                                else:
                                    getattr(module, f"build_{key}_tab")(ctx, ui)

        outs = [results, zs_results, status, table, names, zs_names, last_query]
        query_outs = [query_heat, query_about, query_numbers]

        def clear_tied():
            """A new search: the panel tied to the previous query goes (it reappears on the next click)."""
            return None, "", None

        searches = [go.click(search, [query, pid, top_k, compare, state], outs, api_name="search",
                             concurrency_id="engine")]
        for box in (query, pid):  # Enter in either box searches
            searches.append(box.submit(search, [query, pid, top_k, compare, state], outs, api_visibility="private",
                                       concurrency_id="engine"))
        searches.append(example_set.click(use_example, [example_set], [query], api_visibility="private").then(
            search, [query, pid, top_k, compare, state], outs, api_visibility="private", concurrency_id="engine"))
        searches.append(go_image.click(search_image, [upload, top_k, compare, state], outs, api_name="search_image",
                                       concurrency_id="engine"))
        searches.append(find.click(find_person, [selected, top_k, compare, state], outs, api_name="find_person",
                                   concurrency_id="engine"))
        for event in searches:
            event.then(clear_tied, None, query_outs, api_visibility="private")
        gr.Button(visible=False).click(examples_api, [state], gr.JSON(visible=False), api_name="examples")
        selected.submit(explain, [selected, state], [heat, about], api_name="explain", concurrency_id="engine").then(
            explain_last, [selected, last_query, state], query_outs, api_visibility="private", concurrency_id="engine")
        for gal, names_state, tied in ((results, names, explain_last), (zs_results, zs_names, explain_last_zero_shot)):
            gal.select(pick, [names_state], selected, api_visibility="private").then(
                explain, [selected, state], [heat, about], api_visibility="private", concurrency_id="engine").then(
                tied, [selected, last_query, state], query_outs, api_visibility="private", concurrency_id="engine")
        # the API's own inputs (a name, the query text); the page runs explain_query on the selection above
        gr.Button(visible=False).click(explain_query, [selected, query, state], query_outs, api_name="explain_query",
                                       concurrency_id="engine")
        load.click(set_model, [ckpt, state], [admin, head, state], api_name="set_model", concurrency_id="engine")
        index.click(set_gallery, [folder, state], [admin, head, state], api_name="set_gallery",
                    concurrency_id="engine").then(examples_update, [state], [example_set], api_visibility="private"
                                                  ).then(picked, [state], gallery_pick, api_visibility="private")
        gallery_pick.input(pick_gallery, [gallery_pick, state], [admin, head, state], api_name="pick_gallery",
                           concurrency_id="engine").then(examples_update, [state], [example_set],
                                                         api_visibility="private")
        reset.click(reset_gallery, [state], [admin, head, state], api_name="reset_gallery").then(
            examples_update, [state], [example_set], api_visibility="private").then(
            picked, [state], gallery_pick, api_visibility="private")
        info_btn.click(info, [state], info_json, api_name="info")
        app.load(on_load, [state], [state, head, ckpt], api_visibility="private").then(
            examples_update, [state], [example_set], api_visibility="private")
    _SERVED[app] = files
    return app


def launch(app: gr.Blocks, *, roots: Sequence[Path] = (), host: str = "127.0.0.1", port: Optional[int] = None,
           share: bool = False, prevent_thread_lock: bool = False, concurrency: int = 4, quiet: bool = False,
           max_file_size: Optional[int] = 20 * 2**20):
    """Queue and launch ``app`` (made by :func:`build_app`) behind its :class:`FileRouteGuard`.

    ``roots`` (the folders older callers passed as servable) serve nothing: what is served is the
    app's allow-list, and what it reads is checked against the folders given to :func:`build_app`.
    Uploads over ``max_file_size`` bytes are refused by Gradio (``--max-upload-mb``).
    """
    if roots:
        log.debug("launch: roots %s are not served (the app serves its own files only)", [str(r) for r in roots])
    app.queue(default_concurrency_limit=concurrency)
    guard = Middleware(FileRouteGuard, files=served_files(app), gradio_cache=app.GRADIO_CACHE)
    return app.launch(server_name=host, server_port=port, share=share, allowed_paths=[],
                      app_kwargs={"middleware": [guard]},
                      prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False,
                      ssr_mode=False, theme=gr.themes.Soft(), css=CSS, head=HEAD_CSS + HEAD_SCRIPT,
                      footer_links=["api"],
                      max_file_size=max_file_size)  # uploads over it are refused by Gradio (--max-upload-mb)
