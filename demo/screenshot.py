"""``python -m demo.screenshot [OUT_DIR]``: one screenshot per view of the real app, in headless Chromium.

Launches the demo on the embedded default (or ``--data-root`` ToyPEDES) and saves, under
``OUT_DIR`` (default ``assets/screenshots``), small PNGs (downscaled, 128 colours):

- ``search.png``: an example query with compare mode on and the first result's heatmap (1280 px wide page);
- ``search-390.png``: the same search on a 390 px wide (phone) page;
- ``attention.png``, ``embeddings.png``, ``ablation.png`` (and, with ``--views``, ``transfer.png``,
  ``budget.png``, ``probe.png``): each other view at 1280 px, reached through its group's tab
  (``demo.tabs.tab_path``), after clicking its ``#<view>-run`` button when it has one and waiting
  for its first image. ``--studies DIR`` gives the Studies views a study folder, as ``python -m demo`` does.
"""

from __future__ import annotations

import argparse
import io
import logging
import socket
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from upperson.logs import setup_logging

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
MAX_BYTES = 300_000

log = logging.getLogger("demo.screenshot")

#: true once no Gradio output is waiting for an event (its status tracker shows pending, a progress
#: text or an ETA bar; a pending output is drawn faded), so a shot never catches a panel mid-update
_NOTHING_PENDING = """() => !document.querySelector(
  '.pending, .generating, .eta-bar, .progress-text, .wrap.translucent')"""

_ALL_IMAGES_LOADED = """async () => {
  for (const img of document.querySelectorAll('img')) { img.loading = 'eager'; img.scrollIntoView(); }
  window.scrollTo(0, 0);
  const t0 = performance.now();
  while (performance.now() - t0 < 20000) {
    const imgs = [...document.querySelectorAll('img')].filter(i => i.offsetParent !== null);
    if (imgs.every(i => i.complete)) return true;
    await new Promise(r => setTimeout(r, 50));
  }
  return false;
}"""


def save_small(png: bytes, out: Path, width: int, max_height: int) -> Path:
    """Downscale to ``width``, cut at ``max_height``, 128 colours; fewer colours/pixels until < MAX_BYTES."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img = img.crop((0, 0, img.width, min(img.height, max_height)))
    out.parent.mkdir(parents=True, exist_ok=True)
    for colours in (128, 64, 32):
        img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        if out.stat().st_size < MAX_BYTES:
            break
    log.info("%s: %dx%d, %d KB", out, img.width, img.height, out.stat().st_size // 1024)
    return out


def pick_caption(engine, tries: int = 60) -> str:
    """A gallery caption whose identity UP-Person ranks first (the first caption if none), for a telling picture."""
    items = [it for it in engine.gallery.items if it.captions]
    for it in items[5:5 + tries]:
        result = engine.search(it.captions[0], 1)
        if result.target_pid is not None and (result.rankings[0].metrics or {}).get("R1") == 100:
            return it.captions[0]
    return items[0].captions[0]


def _search(page, caption: str, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#query textarea").fill(caption)
    page.locator("#compare input").check()
    page.locator("#query textarea").press("Enter")
    page.locator("#results img").nth(0).wait_for(state="visible", timeout=60_000)
    page.locator("#zs-results img").nth(0).wait_for(state="visible", timeout=60_000)
    page.locator("#results img").first.click()
    page.locator("#heatmap img").wait_for(state="attached", timeout=60_000)
    page.locator("#heatmap").scroll_into_view_if_needed()
    page.locator("#heatmap img").wait_for(state="visible", timeout=60_000)
    page.locator("#query-heatmap img").wait_for(state="visible", timeout=60_000)  # the query-tied panel
    settle(page)


def settle(page, timeout_ms: int = 60_000) -> None:
    """Wait until no output is pending and every visible image has loaded, then a moment more."""
    try:
        page.wait_for_function(_NOTHING_PENDING, timeout=timeout_ms, polling=100)
    except Exception:  # still busy: capture it as it is, and say so
        log.warning("an output was still pending after %d s", timeout_ms // 1000)
    page.evaluate(_ALL_IMAGES_LOADED)
    page.wait_for_timeout(500)


def _pick_identity(page) -> None:
    """Embeddings: choose the first identity of the dropdown, so the shot shows its highlight and images."""
    box = page.locator("#embeddings-identity input")
    if not box.count():
        return
    try:
        box.first.click()
        page.locator("[role=option]").first.click(timeout=10_000)
        page.locator("#embeddings-images img").first.wait_for(state="visible", timeout=60_000)
    except Exception:  # the view changed: capture it as it is
        log.warning("Embeddings: could not choose an identity")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.screenshot")
    p.add_argument("out", nargs="?", type=Path, default=Path("assets/screenshots"))
    p.add_argument("--data-root", type=Path, help="a ToyPEDES data root (default: the embedded one)")
    p.add_argument("--width", type=int, default=1000, help="width of the saved desktop images (default 1000)")
    p.add_argument("--top-k", type=int, default=12)
    p.add_argument("--views", default="search,attention,embeddings,ablation",
                   help="comma-separated views to capture (of demo.tabs: also transfer, budget, probe)")
    p.add_argument("--studies", type=Path, action="append", default=[], metavar="DIR",
                   help="a study folder for the Studies views (as python -m demo --studies)")
    args = p.parse_args(argv)
    setup_logging("INFO", packages=("upperson", "demo"))
    from playwright.sync_api import sync_playwright

    from demo.app import build_app, launch
    from demo.tabs import tab_path, view_keys, view_label
    from demo.gallery import dataset_gallery, embedded_gallery
    from demo.search import SearchEngine
    from upperson.embedded import cache_dir, load_embedded_model

    views = [v.strip().lower() for v in args.views.split(",") if v.strip()]
    unknown = [v for v in views if v not in view_keys()]
    if unknown:
        p.error(f"--views: unknown view {unknown[0]!r}; views: {', '.join(view_keys())}")
    gallery = dataset_gallery("toypedes", args.data_root, "test") if args.data_root else embedded_gallery()
    engine = SearchEngine(load_embedded_model("upperson"), gallery, cache_dir=cache_dir(), query_threads=1)
    app = build_app(engine, default_top_k=args.top_k, studies=args.studies)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, roots=engine.gallery.roots, port=port, prevent_thread_lock=True, quiet=True)
    caption = pick_caption(engine)
    written = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            _search(page, caption, url)
            if "search" in views:
                written.append(save_small(page.screenshot(full_page=True), args.out / "search.png", args.width, 1900))
            for key in view_keys()[1:]:
                label = view_label(key)
                if key not in views:
                    continue
                for step in tab_path(key):  # its group's tab, then its own
                    page.locator(f"#tab-{step}-button").click()
                run = page.locator(f"#{key}-run")
                if run.count():
                    run.first.click()
                try:
                    page.locator(f"#tab-{key} img").first.wait_for(state="visible", timeout=90_000)
                except Exception:  # a view without images (or not installed): capture what is there
                    log.warning("%s: no image appeared within 90 s", label)
                if key == "embeddings":
                    _pick_identity(page)
                settle(page)
                written.append(save_small(page.screenshot(full_page=True), args.out / f"{key}.png", args.width, 1900))
            if "search" in views:
                phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
                _search(phone, caption, url)
                written.append(save_small(phone.screenshot(full_page=True), args.out / "search-390.png", 390, 2600))
            browser.close()
    finally:
        app.close()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
