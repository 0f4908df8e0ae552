"""The demo in a real browser: headless Chromium (Debian's) driven by Playwright.

One server and one browser for the module; each test opens its own page (its own visitor).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, reference_ranking, start, toy_root, use_session_cache

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# every injection sets window.__pwned or creates an element with an id starting "inj"
INJECT_QUERY = '<img src=x onerror="window.__pwned=1" id=inj1> [link](http://example.com) **bold**'
INJECT_PID = "<img src=x onerror=window.__pwned=2 id=inj2>"
INJECT_FOLDER = "<i id=inj5>folder"
INJECT_FILE = "<img src=x onerror=window.__pwned=3 id=inj3>.png"
INJECT_SKIPPED = "<b id=inj4>skipped.txt"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(engine, url, browser, model) with an allowed folder holding HTML-named files."""
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed at /usr/bin/chromium; .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    use_session_cache()
    from PIL import Image

    from demo.gallery import dataset_gallery

    allowed = tmp_path_factory.mktemp("allowed")
    inj = allowed / INJECT_FOLDER
    inj.mkdir()
    gallery = dataset_gallery("toypedes", toy_root(), "test")
    Image.open(gallery.items[0].path).save(inj / INJECT_FILE)
    Image.open(gallery.items[1].path).save(inj / "plain.png")
    (inj / INJECT_SKIPPED).write_text("not an image")
    model = load_model()
    engine = make_engine(model, gallery)
    app, url = start(engine, allow_roots=[allowed])
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
    try:
        yield engine, url, browser, model
    finally:
        browser.close()
        pw.stop()
        app.close()


def _open(site, width=1280, height=900):
    _, url, browser, _ = site
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, wait_until="domcontentloaded", timeout=30_000)
    page.locator("#query textarea").wait_for(timeout=30_000)
    return page


def _set_top_k(page, k):
    page.locator("#topk input[type=number]").fill(str(k))
    page.locator("#topk input[type=number]").press("Enter")


def test_enter_searches_and_shift_enter_adds_a_line(site):
    engine, _, _, model = site
    item = engine.gallery.items[3]
    caption = item.captions[0]
    page = _open(site)
    try:
        box = page.locator("#query textarea")
        box.fill("a person")
        box.press("Shift+Enter")
        assert box.input_value() == "a person\n"  # Shift+Enter adds a line, and searches nothing
        page.wait_for_timeout(300)
        assert page.locator("#results img").count() == 0
        box.fill(caption)
        _set_top_k(page, 6)
        box.press("Enter")
        images = page.locator("#results img")
        images.nth(5).wait_for(state="visible", timeout=30_000)
        assert images.count() == 6 and box.input_value() == caption  # no newline was inserted
        status = page.locator("#status").inner_text(timeout=10_000)
        assert f"Identity {item.pid}" in status and "R@1" in status
        # why it matched: click the first result
        paths = [it.path for it in engine.gallery.items]
        first = engine.gallery.relative_name(engine.gallery.items[reference_ranking(model, paths, caption, 1)[0][0]])
        images.first.click()
        page.wait_for_function(
            "() => { const t = document.querySelector('#selected textarea'); return t && t.value.length > 0; }",
            timeout=30_000)
        assert page.locator("#selected textarea").input_value() == first
        page.locator("#heatmap img").wait_for(state="visible", timeout=30_000)
        page.locator("#query-heatmap img").wait_for(state="visible", timeout=30_000)  # tied to the query
        assert "Tied to the query" in page.locator("#query-about").inner_text()
        # after an image search there is no query text to explain, and the page says so
        page.locator("#find-person").click()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('left out')",
                               timeout=30_000)
        # a new search clears the panel tied to the previous query (it named a query no longer shown)
        page.wait_for_function("() => !document.querySelector('#query-about').innerText.includes('Tied to the query')",
                               timeout=10_000)
        assert page.locator("#query-heatmap img").count() == 0
        images.first.click()
        page.wait_for_function("() => document.querySelector('#query-about').innerText.includes('image search')",
                               timeout=30_000)
        assert page.locator("#query-heatmap img").count() == 0
        # Enter in the person-id box searches too, scoring the query against that identity
        other = next(it.pid for it in engine.gallery.items if it.pid != item.pid)
        page.locator("#pid textarea").fill(str(other))
        page.locator("#pid textarea").press("Enter")
        page.wait_for_function(f"() => document.querySelector('#status').innerText.includes('Identity {other}')",
                               timeout=30_000)
    finally:
        page.close()


@pytest.mark.parametrize("width,max_columns", [(1280, 8), (800, 6), (390, 3)])
def test_every_result_fits_the_viewport(site, width, max_columns):
    """All top-k results (and their whole captions) lie inside the viewport's width."""
    k = 20
    page = _open(site, width=width)
    try:
        page.locator("#query textarea").fill("a woman in a red coat")
        page.locator("#pid textarea").fill(str(site[0].gallery.items[0].pid))  # long captions: ✓ #20 · 0.123 · id 7
        _set_top_k(page, k)
        page.locator("#search").click()
        page.locator("#results .gallery-item").nth(k - 1).wait_for(timeout=30_000)
        page.wait_for_timeout(300)
        boxes = page.evaluate("""() => {
            const vw = document.documentElement.clientWidth;
            const items = [...document.querySelectorAll('#results .gallery-item')].map(e => {
                const r = e.getBoundingClientRect();
                const c = e.querySelector('.caption-label');
                return {left: r.left, right: r.right, cut: c ? c.scrollWidth > c.clientWidth + 1 : true,
                        cap: c ? c.getBoundingClientRect().right : 0};
            });
            return {vw, items, overflow: document.documentElement.scrollWidth > vw};
        }""")
        items = boxes["items"]
        assert len(items) == k
        vw = boxes["vw"]
        assert all(0 <= it["left"] and it["right"] <= vw + 0.5 and it["cap"] <= vw + 0.5 for it in items), (vw, items)
        assert not any(it["cut"] for it in items), "a caption is cut off"
        assert not boxes["overflow"]
        columns = len({round(it["left"]) for it in items})
        assert 1 <= columns <= max_columns
        if width >= 1280:
            assert columns == 8
    finally:
        page.close()


def test_user_text_is_rendered_as_text(site):
    """An HTML query, person id, folder and file names are shown as text: no element comes from them."""
    engine, _, _, _ = site
    page = _open(site)
    try:
        injected = "() => ({n: document.querySelectorAll('[id^=inj]').length, pwned: window.__pwned || 0, " \
                   "links: document.querySelectorAll('#status a, #status strong + strong').length})"
        page.locator("#query textarea").fill(INJECT_QUERY)
        page.locator("#pid textarea").fill(INJECT_PID)
        _set_top_k(page, 3)
        page.locator("#search").click()
        page.locator("#results img").nth(2).wait_for(state="visible", timeout=30_000)
        status = page.locator("#status")
        assert "<img src=x" in status.inner_text() and "[link](http://example.com)" in status.inner_text()
        assert status.locator("a, img, strong:has-text('bold')").count() == 0
        # a folder and files with HTML names
        page.get_by_text("Model and gallery").click()
        page.locator("#folder textarea").fill(INJECT_FOLDER)
        page.locator("#index-folder").click()
        page.wait_for_function("() => document.querySelector('#admin').innerText.includes('Indexed')", timeout=30_000)
        admin = page.locator("#admin").inner_text()
        assert INJECT_FOLDER in admin and INJECT_SKIPPED in admin
        assert "2 images" in page.locator("#header").inner_text()
        page.locator("#selected textarea").fill(INJECT_FILE)
        page.locator("#selected textarea").press("Enter")
        page.wait_for_function("() => document.querySelector('#about').innerText.includes('.png')", timeout=30_000)
        assert INJECT_FILE in page.locator("#about").inner_text()
        page.locator("#heatmap img").wait_for(state="visible", timeout=30_000)
        page.wait_for_timeout(300)  # an injected onerror would have fired by now
        assert page.evaluate(injected) == {"n": 0, "pwned": 0, "links": 0}
        # another visitor, loaded now, sees the start-up gallery: the switch was this page's only
        other = _open(site)
        try:
            page.wait_for_timeout(200)
            head = other.locator("#header").inner_text()
            assert engine.gallery.name in head and f"{len(engine.gallery)} images" in head
        finally:
            other.close()
        assert "2 images" in page.locator("#header").inner_text()
    finally:
        page.close()


def test_an_example_searches_on_click_and_the_examples_follow_the_gallery(site):
    """An example query searches at once; a folder without captions gets generic examples (said so), and
    "Back to the default gallery" brings the gallery's own captions back."""
    engine, _, _, _ = site
    first = engine.gallery.items[0].captions[0]
    page = _open(site)
    try:
        examples = page.locator("#examples button")
        examples.first.click()
        page.locator("#results img").first.wait_for(state="visible", timeout=30_000)
        assert page.locator("#query textarea").input_value() == first
        assert f"Identity {engine.gallery.items[0].pid}" in page.locator("#status").inner_text()
        page.get_by_text("Model and gallery").click()
        page.locator("#folder textarea").fill(INJECT_FOLDER)
        page.locator("#index-folder").click()
        page.wait_for_function("() => document.querySelector('#examples').innerText.includes('no captions')",
                               timeout=30_000)
        assert first[:20] not in page.locator("#examples").inner_text()
        page.locator("#reset-gallery").click()
        page.wait_for_function("() => document.querySelector('#admin').innerText.includes('Back on')", timeout=30_000)
        assert engine.gallery.name in page.locator("#header").inner_text()
        page.wait_for_function(f"() => document.querySelector('#examples').innerText.includes({first[:20]!r})",
                               timeout=30_000)
    finally:
        page.close()


def test_a_top_k_of_0_typed_in_the_box_is_refused_not_silently_1(site):
    page = _open(site)
    try:
        _set_top_k(page, 0)
        page.locator("#query textarea").fill("a man")
        page.locator("#search").click()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('1 to 200')",
                               timeout=30_000)
        assert page.locator("#results img").count() == 0
    finally:
        page.close()
