"""The Gradio UI: search, compare, "why it matched", model and gallery switching.

Every event has an ``api_name``, so everything the page does can be done with
``gradio_client``: ``/search``, ``/explain``, ``/set_model``, ``/set_gallery``, ``/info``.
The app serves files only from the gallery roots (``allowed_paths``); the functions take
gallery *names* (as the results show them), never arbitrary paths.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import gradio as gr
from PIL import Image, ImageOps

from demo.gallery import GalleryError, folder_gallery, resolve_under
from demo.search import UPPERSON, ZERO_SHOT, QueryError, SearchEngine, SearchResult
from upperson.io import atomic_path

log = logging.getLogger(__name__)

TITLE = "UP-Person: text-based person retrieval"
MATCH = (46, 160, 67)  # frame of a result of the query's identity
MISMATCH = (200, 50, 50)
CSS = """
#status {min-height: 2.5em}
.gallery-col .caption-label {font-variant-numeric: tabular-nums}
"""


def _caption(h) -> str:
    mark = "" if h.relevant is None else ("✓ " if h.relevant else "✗ ")
    pid = "" if h.pid is None else f" · id {h.pid}"
    return f"{mark}#{h.rank} · {h.score:.3f}{pid}"


class _ImageFiles:
    """Images the app makes (framed results, heatmaps), written once, atomically, to a private temp folder.

    Returned as file paths, Gradio copies them into its cache atomically; returning PIL
    images instead lets concurrent requests for the same picture race on Gradio's cache
    file (a client can read it half-written).
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="upperson-demo-"))
        atexit.register(shutil.rmtree, self.dir, True)

    def save(self, image: Image.Image, key: str) -> str:
        path = self.dir / (hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest() + ".png")
        if not path.exists():
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
        return str(path)

    def framed(self, src: Path, relevant: bool) -> str:
        """``src`` with a green (relevant) or red frame."""
        stat = src.stat()
        key = f"frame:{src}:{stat.st_mtime_ns}:{stat.st_size}:{relevant}"
        path = self.dir / (hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest() + ".png")
        if path.exists():
            return str(path)
        with Image.open(src) as im:
            img = im.convert("RGB")
        border = max(2, img.height // 40)
        return self.save(ImageOps.expand(img, border=border, fill=MATCH if relevant else MISMATCH), key)


def _gallery_value(engine: SearchEngine, ranking, files: _ImageFiles) -> list[tuple[str, str]]:
    """(image file, caption) pairs; images of a known-identity query get a green or red frame."""
    out: list[tuple[str, str]] = []
    for h in ranking.hits:
        path = engine.gallery.items[h.item].path
        out.append((str(path) if h.relevant is None else files.framed(path, h.relevant), _caption(h)))
    return out


def _status(result: SearchResult) -> str:
    lines = [f"**Query:** {result.query}"] if result.query else []
    if result.target_pid is not None:
        src = "the query is one of its captions" if result.target_source == "caption" else "given by you"
        lines.append(f"**Identity {result.target_pid}** ({src}); ✓ marks its images.")
        for r in result.rankings:
            m = r.metrics or {}
            lines.append(f"- {r.variant}: R@1 **{m.get('R1', 0):.0f}** · AP **{m.get('AP', 0):.1f}** · "
                         f"first match at rank {m.get('first_match')} · "
                         f"{m.get('relevant')} image(s) of this identity in the gallery")
    for n in result.notices:
        lines.append(f"> ⚠️ {n}")
    return "\n\n".join(lines)


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


def build_app(engine: SearchEngine, *, allow_roots: Sequence[Path] = (), default_top_k: int = 20,
              examples: Optional[list[str]] = None) -> gr.Blocks:
    """The Blocks app around ``engine``."""
    allow_roots = [Path(r).resolve() for r in allow_roots]
    files = _ImageFiles()
    examples = examples or [
        c for it in engine.gallery.items for c in it.captions[:1]][:8] or [
        "a woman in a red coat with a black backpack", "a man wearing a blue jacket and grey trousers"]

    def info() -> dict:
        g = engine.gallery
        return {"gallery": g.name, "images": len(g), "identities": g.num_ids,
                "skipped": [[p.name, why] for p, why in engine.skipped],
                "model": engine.model.config.name, "checkpoint": engine.checkpoint_name,
                "checkpoints": list(engine.checkpoints), "allowed_roots": [str(r) for r in allow_roots]}

    def header() -> str:
        g = engine.gallery
        ids = f", {g.num_ids} identities" if g.has_ids else ""
        skipped = f" · {len(engine.skipped)} file(s) skipped (see log)" if engine.skipped else ""
        return (f"**Gallery:** {g.name}: {len(g)} images{ids}{skipped} · **Model:** {engine.model.config.name}, "
                f"PETL weights *{engine.checkpoint_name}*")

    def search(query: str, pid: str, top_k: float, compare: bool):
        """Rank the gallery for a description (and, with compare, by the zero-shot backbone too)."""
        variants = (UPPERSON, ZERO_SHOT) if compare else (UPPERSON,)
        try:
            result = engine.search(query, int(top_k or default_top_k), pid=pid or None, variants=variants)
        except QueryError as exc:
            return [], gr.Gallery(value=[], visible=bool(compare)), f"ℹ️ {exc}", {"error": str(exc)}, [], []
        main = result.rankings[0]
        zs = result.rankings[1] if compare else None
        names = [h.file for h in main.hits]
        zs_names = [h.file for h in zs.hits] if zs else []
        return (_gallery_value(engine, main, files),
                gr.Gallery(value=_gallery_value(engine, zs, files) if zs else [], visible=bool(compare)),
                _status(result), _results_json(result), names, zs_names)

    def explain(name: str):
        """The UP-Person prefix-attention heatmap and the captions of one gallery image (by its name)."""
        from demo.heatmap import overlay

        try:
            image, heat, item = engine.explain(name)
        except QueryError as exc:
            return None, f"ℹ️ {exc}"
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
        lines = [f"**{engine.gallery.relative_name(item)}**" + (f" · id {item.pid}" if item.pid is not None else ""),
                 note]
        if item.captions:
            lines.append("**Captions:**\n" + "\n".join(f"- {c}" for c in item.captions))
        key = f"heat:{item.path}:{engine.checkpoint_name}:{heat.tobytes().hex() if heat is not None else ''}"
        return files.save(panel, key), "\n\n".join(lines)

    def pick(names: list[str], evt: gr.SelectData) -> str:
        return names[evt.index] if names and 0 <= evt.index < len(names) else ""

    def set_model(name: str):
        """Swap the PETL weights to another checkpoint of the loaded backbone."""
        try:
            engine.load_checkpoint(name)
        except Exception as exc:  # CheckpointMismatchError, missing file, ...
            log.warning("cannot load checkpoint %s: %s", name, exc)
            return f"⚠️ {exc}", header()
        return f"Loaded PETL weights *{name}*.", header()

    def set_gallery(folder: str):
        """Index a folder under an allowed root and make it the gallery."""
        try:
            path = resolve_under(folder, allow_roots)
            engine.set_gallery(folder_gallery(path))
        except GalleryError as exc:
            return f"⚠️ {exc}", header()
        skipped = f"; {len(engine.skipped)} file(s) skipped: " + ", ".join(
            p.name for p, _ in engine.skipped[:10]) if engine.skipped else ""
        return f"Indexed {path}: {len(engine.gallery)} images{skipped}.", header()

    with gr.Blocks(title="UP-Person demo") as app:
        gr.Markdown(f"# {TITLE}\nDescribe a pedestrian; the gallery is ranked by a frozen CLIP with "
                    "UP-Person's prefix, LoRA and adapters. Click a result to see why it matched.")
        head = gr.Markdown(header())
        with gr.Row():
            with gr.Column(scale=4):
                query = gr.Textbox(label="Description", lines=2, max_length=4000, elem_id="query",
                                   placeholder="a woman in a red coat with a black backpack")
            with gr.Column(scale=1, min_width=180):
                pid = gr.Textbox(label="Person id (optional)", placeholder="to score the query", elem_id="pid")
                top_k = gr.Slider(1, 200, value=default_top_k, step=1, label="Top k", elem_id="topk")
                compare = gr.Checkbox(label="Compare with zero-shot CLIP", value=False, elem_id="compare")
        go = gr.Button("Search", variant="primary", elem_id="search")
        gr.Examples(examples=[[e] for e in examples], inputs=[query], label="Example queries (gallery captions)")
        status = gr.Markdown(elem_id="status")
        names, zs_names = gr.State([]), gr.State([])
        with gr.Row():
            results = gr.Gallery(label=f"{UPPERSON}", columns=8, height="auto", object_fit="contain",
                                 elem_id="results", elem_classes="gallery-col", allow_preview=False)
            zs_results = gr.Gallery(label=ZERO_SHOT, columns=8, height="auto", object_fit="contain",
                                    visible=False, elem_id="zs-results", allow_preview=False)
        with gr.Accordion("Why it matched", open=True):
            with gr.Row():
                selected = gr.Textbox(label="Selected image (click a result)", elem_id="selected", scale=1)
            with gr.Row():
                heat = gr.Image(label="Prefix attention", type="filepath", height=400, elem_id="heatmap")
                about = gr.Markdown()
        with gr.Accordion("Results as JSON", open=False):
            table = gr.JSON()
        with gr.Accordion("Model and gallery", open=False):
            with gr.Row():
                ckpt = gr.Dropdown(list(engine.checkpoints), value=engine.checkpoint_name, label="PETL checkpoint")
                load = gr.Button("Load weights")
            with gr.Row():
                folder = gr.Textbox(label="Image folder" + (f" (under {', '.join(map(str, allow_roots))})"
                                                            if allow_roots else " (off: start with --allow-root DIR)"),
                                    interactive=bool(allow_roots))
                index = gr.Button("Index folder", interactive=bool(allow_roots))
            admin = gr.Markdown()
            info_btn = gr.Button("Show info", size="sm")
            info_json = gr.JSON()

        outs = [results, zs_results, status, table, names, zs_names]
        go.click(search, [query, pid, top_k, compare], outs, api_name="search", concurrency_id="engine")
        query.submit(search, [query, pid, top_k, compare], outs, api_visibility="private", concurrency_id="engine")
        selected.submit(explain, [selected], [heat, about], api_name="explain", concurrency_id="engine")
        for gal, state in ((results, names), (zs_results, zs_names)):
            gal.select(pick, [state], selected, api_visibility="private").then(
                explain, [selected], [heat, about], api_name="explain_selected", api_visibility="private",
                concurrency_id="engine")
        load.click(set_model, [ckpt], [admin, head], api_name="set_model", concurrency_limit=1)
        index.click(set_gallery, [folder], [admin, head], api_name="set_gallery", concurrency_limit=1)
        info_btn.click(info, None, info_json, api_name="info")
    return app


def launch(app: gr.Blocks, *, roots: Sequence[Path], host: str = "127.0.0.1", port: Optional[int] = None,
           share: bool = False, prevent_thread_lock: bool = False, concurrency: int = 4, quiet: bool = False):
    """Queue and launch; only ``roots`` (the gallery folders) may be served as files."""
    app.queue(default_concurrency_limit=concurrency)
    allowed = sorted({str(Path(r).resolve()) for r in roots})
    return app.launch(server_name=host, server_port=port, share=share, allowed_paths=allowed,
                      prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False,
                      ssr_mode=False, theme=gr.themes.Soft(), css=CSS, footer_links=["api"])
