"""The Attention, Embeddings and Ablation views in a real browser (headless Chromium via Playwright).

One server and one browser for the module; each test opens its own page (its own visitor).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from demo.tabs import TAB_GROUPS, tab_path
from demo.views.ablation_view import shipped_folder
from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, start, toy_root, use_session_cache

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT = 90_000  # ms; the first UMAP compiles numba's code


@pytest.fixture(scope="module")
def site():
    """(engine, url, browser)."""
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed at /usr/bin/chromium; .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    use_session_cache()
    from demo.gallery import dataset_gallery

    engine = make_engine(load_model(), dataset_gallery("toypedes", toy_root(), "test"))
    app, url = start(engine)
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
    try:
        yield engine, url, browser
    finally:
        browser.close()
        pw.stop()
        app.close()


def _open(site, tab: str, width: int = 1280):
    _, url, browser = site
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(url, wait_until="domcontentloaded", timeout=30_000)
    page.locator("#query textarea").wait_for(timeout=30_000)
    if tab != "search":
        _tab(page, tab)
    return page


def _tab(page, key: str) -> None:
    """Show the view ``key``: its group's tab, then its own (``demo.tabs.tab_path``); a tab a narrow screen
    moved into its bar's "More tabs" menu is chosen there (the test of the bar then fails on its count)."""
    for step in tab_path(key):
        button = page.locator(f"#tab-{step}-button")
        if button.count() == 0 or not button.is_visible():
            page.get_by_role("button", name="More tabs").click()
            page.locator(".overflow-dropdown button", has_text=step.capitalize()).click()
        elif button.get_attribute("aria-selected") != "true":
            button.click()


def _choose(page, elem_id: str, option: str) -> None:
    """Open the dropdown ``elem_id`` and click the option whose text is ``option``."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def image_src(page, selector: str) -> str:
    img = page.locator(f"{selector} img").first
    img.wait_for(state="attached", timeout=WAIT)
    img.scroll_into_view_if_needed(timeout=WAIT)  # the page's images load lazily, once near the screen
    img.wait_for(timeout=WAIT)
    return img.get_attribute("src")


def _changed(page, selector: str, before: str) -> str:
    page.wait_for_function("([sel, s]) => { const i = document.querySelector(sel + ' img'); return i && i.src !== s; }",
                           arg=[selector, before], timeout=WAIT)
    return image_src(page, selector)


def _settled(page, selector: str, tries: int = 20) -> str:
    """The image's src once it stays the same for a second (a redraw still on its way has landed)."""
    last = image_src(page, selector)
    for _ in range(tries):
        page.wait_for_timeout(1000)
        now = image_src(page, selector)
        if now == last:
            return now
        last = now
    return last


def fits_the_width(page, width: int) -> None:
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= width + 1, f"the page is {overflow} px wide in a {width} px viewport"


# Gradio's error state: a status tracker of a failed event's outputs shows an "Error" badge, and a
# toast pops up (the app raises none: a refusal is a message in the view)
NO_ERROR_STATE = """() => [...document.querySelectorAll('[data-testid=status-tracker]')]
    .filter(e => /\\bError\\b/.test(e.innerText)).length
  + document.querySelectorAll('[data-testid=toast-body], [data-testid=toast-text], .toast-body').length"""


def test_every_view_opens_on_something_and_no_panel_shows_an_error_at_1280_and_390(site):
    """Each tab, opened as it comes, shows a figure (Attention: the first image and caption; Ablation: the
    shipped study) or its action's result, every tab is reachable without the "more" menu, and no
    element is in Gradio's error state; a refusal is one message in the view."""
    for width in (1280, 390):
        page = _open(site, "search", width=width)
        try:
            # the top bar: the three groups, none behind "⋯"
            assert page.locator("[role=tablist]").first.locator("button").count() == len(TAB_GROUPS)
            assert all(page.locator(f"#tab-{g.key}-button").is_visible() for g in TAB_GROUPS)
            _tab(page, "attention")
            image_src(page, "#attention-image-map")
            assert "caption" in page.locator("#attention-info").inner_text()
            _tab(page, "ablation")
            image_src(page, "#ablation-params")
            shown = "#ablation-table" if width > 480 else "#ablation-cards"  # a phone: one card per variant
            page.locator(shown).get_by_text("upperson", exact=True).first.wait_for(timeout=WAIT)
            _tab(page, "attention")
            page.locator("#attention-caption input").fill("   ")
            page.locator("#attention-caption input").press("Enter")
            page.locator("#attention-run").click()
            page.wait_for_function("() => document.querySelector('#attention-info').innerText.includes('Type a')",
                                   timeout=WAIT)
            assert page.evaluate(NO_ERROR_STATE) == 0
            fits_the_width(page, width)
        finally:
            page.close()


def test_attention_from_a_search_result_and_a_layer_redraws_the_map(site):
    engine, _, _ = site
    page = _open(site, "search")
    try:
        page.locator("#query textarea").fill(engine.gallery.items[4].captions[0])
        page.locator("#query textarea").press("Enter")
        page.locator("#results .thumbnail-item").first.click()  # hand-off: the clicked result is the image
        page.wait_for_function("() => document.querySelector('#selected textarea').value !== ''", timeout=WAIT)
        selected = page.locator("#selected textarea").input_value()
        _tab(page, "attention")
        page.wait_for_function("(v) => document.querySelector('#attention-image input').value === v", arg=selected,
                               timeout=WAIT)
        item = engine.gallery.items[engine.gallery_index().by_name[selected]]
        page.wait_for_function("(v) => document.querySelector('#attention-caption input').value === v",
                               arg=item.captions[0], timeout=WAIT)  # its own first caption
        page.locator("#attention-run").click()
        page.wait_for_function("(v) => document.querySelector('#attention-info').innerText.includes(v)", arg=selected,
                               timeout=WAIT)
        before = _settled(page, "#attention-image-map")
        text_before = _settled(page, "#attention-text-map")  # the run redraws both towers: let both land
        _choose(page, "attention-layer", "2")
        after = _changed(page, "#attention-image-map", before)
        assert after != before
        assert "image tower: layer 2" in page.locator("#attention-info").inner_text()
        assert image_src(page, "#attention-text-map") == text_before  # the other tower is not redrawn
        _choose(page, "attention-head", "1")
        _changed(page, "#attention-image-map", after)
        assert "layer 2, head 1" in page.locator("#attention-info").inner_text()
    finally:
        page.close()


def test_embeddings_plot_and_an_identity_shows_its_images(site):
    engine, _, _ = site
    page = _open(site, "embeddings")
    try:
        box = page.locator("#embeddings-n input[type=number]")
        box.fill("3")
        box.press("Enter")
        page.locator("#embeddings-run").click()
        before = image_src(page, "#embeddings-plot")
        assert "3 identities" in page.locator("#embeddings-info").inner_text()
        page.locator("#embeddings-identity input").click()
        options = page.get_by_role("option")
        assert options.count() == 3
        label = options.nth(1).inner_text().strip()
        options.nth(1).click()
        pid = int(label.split("·")[0].replace("id", "").strip())
        _changed(page, "#embeddings-plot", before)
        own = [it for it in engine.gallery.items if it.pid == pid]
        page.wait_for_function("(n) => document.querySelectorAll('#embeddings-images img').length === n",
                               arg=len(own), timeout=WAIT)
        assert f"Identity {pid}" in page.locator("#embeddings-captions").inner_text()
    finally:
        page.close()


# (id, CSS width, natural width) of every figure the page shows, once it has loaded
FIGURE_SIZES = """() => [...document.querySelectorAll('[id^=attention-] img, [id^=embeddings-plot] img, [id^=ablation-] img')]
    .filter(i => i.offsetParent && i.complete && i.naturalWidth)
    .map(i => [i.closest('[id]').id, i.getBoundingClientRect().width, i.naturalWidth])"""


def _figures_fit(page, width: int, drawn_px: int) -> None:
    """Every figure shown is at most as wide as the screen and was drawn at most ``drawn_px`` wide: for
    the screen's width, not scaled down from a desktop drawing (the ablation's curves included: on a
    phone they are drawn from the study's logs instead of its desktop ablation_curves.png)."""
    sizes = page.evaluate(FIGURE_SIZES)
    assert sizes, "no figure shown"
    for elem_id, shown, natural in sizes:
        assert shown <= width, f"{elem_id} is {shown} px wide in a {width} px viewport"
        assert natural <= drawn_px, f"{elem_id} was drawn {natural} px wide, not for a {width} px screen"


def test_ablation_table_figure_and_metric_selector(site):
    page = _open(site, "ablation")
    try:
        page.locator("#ablation-run").click()
        before = image_src(page, "#ablation-bars")
        params = page.locator("#ablation-params img").first
        page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=params.element_handle(), timeout=WAIT)
        assert params.evaluate("i => i.naturalWidth") == round(5.6 * 150)  # the CLI's figure on a desktop
        page.locator("#ablation-table").get_by_text("upperson", exact=True).first.wait_for(timeout=WAIT)
        assert "python -m analysis ablation" in page.locator("#ablation-command").inner_text()
        _choose(page, "ablation-metric", "mINP")
        _changed(page, "#ablation-bars", before)
    finally:
        page.close()


def test_views_fit_a_phone_screen(site):
    """At 390 px no view makes the page scroll sideways (each tab shown after its action ran)."""
    engine, _, _ = site
    page = _open(site, "ablation", width=390)
    phone_px = round(3.6 * 150)  # analysis.style.PHONE
    try:
        page.locator("#ablation-run").click()
        image_src(page, "#ablation-bars")
        image_src(page, "#ablation-params")
        image_src(page, "#ablation-curves")
        fits_the_width(page, 390)
        _figures_fit(page, 390, phone_px)
        # the table collapses into one card per variant: nothing to scroll sideways
        assert not page.locator("#ablation-table").is_visible()
        cards = page.locator("#ablation-cards")
        cards.get_by_text("UP-Person", exact=True).first.wait_for(timeout=WAIT)
        assert cards.locator(".ablation-card").count() == len(pd.read_csv(shipped_folder() / "ablation.csv"))
        overflow = cards.evaluate("""c => [c, ...c.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 1
                                     && getComputedStyle(e).overflowX !== 'visible').length""")
        assert overflow == 0 and cards.evaluate("c => c.scrollWidth <= c.clientWidth")
        _tab(page, "attention")
        page.locator("#attention-image input").fill(engine.gallery.relative_name(engine.gallery.items[0]))
        page.locator("#attention-image input").press("Enter")
        page.wait_for_function("() => document.querySelector('#attention-caption input').value !== ''", timeout=WAIT)
        page.locator("#attention-run").click()
        image_src(page, "#attention-image-map")
        image_src(page, "#attention-text-map")
        image_src(page, "#attention-scales")
        fits_the_width(page, 390)
        _figures_fit(page, 390, phone_px)
        _tab(page, "embeddings")
        page.locator("#embeddings-n input[type=number]").fill("3")
        page.locator("#embeddings-n input[type=number]").press("Enter")
        page.locator("#embeddings-run").click()
        image_src(page, "#embeddings-plot")
        fits_the_width(page, 390)
        _figures_fit(page, 390, phone_px)
    finally:
        page.close()


def test_html_in_an_image_name_and_a_caption_stays_text(site):
    inject = '<img src=x onerror="window.__pwned=1" id=inj9>.png'
    page = _open(site, "attention")
    try:
        page.locator("#attention-image input").fill(inject)
        page.locator("#attention-image input").press("Enter")
        page.locator("#attention-caption input").fill("<b id=inj8>a man</b>")
        page.locator("#attention-caption input").press("Enter")
        page.locator("#attention-run").click()
        page.wait_for_function("() => document.querySelector('#attention-info').innerText.includes('is not an image')",
                               timeout=WAIT)  # one message in the view, not a toast and red badges
        info = page.locator("#attention-info").inner_text()
        assert "<img src=x" in info and "is not an image of the current gallery" in info
        assert page.locator("#inj9, #inj8").count() == 0
        assert page.evaluate(NO_ERROR_STATE) == 0
        assert page.evaluate("() => window.__pwned") is None
    finally:
        page.close()
