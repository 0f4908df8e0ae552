"""``python -m demo.screenshot [OUT.png]``: the app with a query and its explanation, in headless Chromium.

Launches the demo on the embedded default (or ``--data-root`` ToyPEDES), runs one example
query with compare mode on, opens the first result's heatmap, and saves a screenshot
(default ``assets/demo_screenshot.png``, downscaled to keep it small).
"""

from __future__ import annotations

import argparse
import io
import logging
import socket
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.screenshot")
    p.add_argument("out", nargs="?", type=Path, default=Path("assets/demo_screenshot.png"))
    p.add_argument("--data-root", type=Path, help="a ToyPEDES data root (default: the embedded one)")
    p.add_argument("--width", type=int, default=1000, help="width of the saved image (default 1000)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from playwright.sync_api import sync_playwright

    from demo.app import build_app, launch
    from demo.gallery import dataset_gallery, embedded_gallery
    from demo.search import SearchEngine
    from upperson.embedded import cache_dir, load_embedded_model

    gallery = dataset_gallery("toypedes", args.data_root, "test") if args.data_root else embedded_gallery()
    engine = SearchEngine(load_embedded_model("upperson"), gallery, cache_dir=cache_dir(), query_threads=1)
    app = build_app(engine, default_top_k=12)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, roots=gallery.roots, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.locator("#query textarea").fill(gallery.items[min(5, len(gallery) - 1)].captions[0])
            page.locator("#compare input").check()
            page.locator("#search").click()
            page.locator("#results img").nth(0).wait_for(state="visible", timeout=60_000)
            page.locator("#zs-results img").nth(0).wait_for(state="visible", timeout=60_000)
            page.locator("#results img").first.click()
            page.locator("#heatmap img").wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(500)
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        app.close()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((args.width, round(img.height * args.width / img.width)), Image.LANCZOS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
