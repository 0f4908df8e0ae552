"""The demo in a real browser: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, reference_ranking, session_cache, start, toy_root, use_session_cache

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def test_browser_search_fills_the_gallery_and_explains():
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed at /usr/bin/chromium; .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    use_session_cache()
    from demo.gallery import dataset_gallery
    from demo.search import SearchEngine

    model = load_model()
    engine = make_engine(model, dataset_gallery("toypedes", toy_root(), "test"))
    item = engine.gallery.items[3]
    caption = item.captions[0]
    k = 6
    paths = [it.path for it in engine.gallery.items]
    expected_first = engine.gallery.relative_name(engine.gallery.items[reference_ranking(model, paths, caption, 1)[0][0]])
    app, url = start(engine)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url, wait_until="domcontentloaded", timeout=30_000)
                page.locator("#query textarea").fill(caption)
                page.locator("#topk input[type=number]").fill(str(k))
                page.locator("#topk input[type=number]").press("Enter")
                page.locator("#search").click()
                images = page.locator("#results img")
                images.nth(k - 1).wait_for(state="visible", timeout=30_000)
                assert images.count() == k
                status = page.locator("#status").inner_text(timeout=10_000)
                assert f"Identity {item.pid}" in status and "R@1" in status
                assert "#1 ·" in page.locator("#results").inner_text()
                # why it matched: click the first result
                images.first.click()
                page.wait_for_function(
                    "() => { const t = document.querySelector('#selected textarea'); return t && t.value.length > 0; }",
                    timeout=30_000)
                assert page.locator("#selected textarea").input_value() == expected_first
                page.locator("#heatmap img").wait_for(state="visible", timeout=30_000)
            finally:
                browser.close()
    finally:
        app.close()
