"""Query latency of the demo's search: text encoding plus ranking, p50 and p95.

``python -m demo.benchmark`` (or ``python -m demo --benchmark``) measures, one query at a
time as the app serves them, on

1. the embedded gallery (ToyPEDES test split, features from the embedding cache), and
2. a synthetic store of 100,000 random unit image embeddings (the ranking cost at scale).

Each measurement is ``engine.prepare`` (clean + tokenise) + ``encode_query`` (padding
trimmed) + ``rank`` (similarity and top-k). Image embedding is a one-off cost, not counted.

``--browser`` measures what a visitor waits for instead: the app is launched on the embedded
model and gallery, headless Chromium types each query, and the time from the click on
*Search* until the status line shows the query and every one of the top-k thumbnails has
loaded is recorded (``performance.now()`` in the page). The same queries through
``gradio_client`` with default settings (it downloads every result image) are measured too.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from upperson.logs import setup_logging

log = logging.getLogger(__name__)


def _measure(engine, queries: list[str], features: torch.Tensor, k: int, warmup: int) -> np.ndarray:
    times = []
    for i, text in enumerate(queries):
        t0 = time.perf_counter()
        q = engine.prepare(text)
        engine.rank(features, engine.encode_query(q.tokens), k)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt * 1000.0)
    return np.asarray(times)


def _row(name: str, ms: np.ndarray) -> str:
    return (f"{name:<34} n={len(ms):>4}  p50 {np.percentile(ms, 50):7.2f} ms  "
            f"p95 {np.percentile(ms, 95):7.2f} ms  mean {ms.mean():7.2f} ms")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=200, help="queries measured (default 200)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--store", type=int, default=100_000, help="size of the synthetic store (default 100000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for a query (default 1, as the app)")
    p.add_argument("--toypedes-preset", default=None, help="ToyPEDES preset of the embedded gallery (default: the card's)")
    p.add_argument("--browser", action="store_true",
                   help="measure the page's search round-trip in headless Chromium (and gradio_client) instead")
    p.add_argument("--gallery", type=Path, default=None,
                   help="with --browser: a folder of images to search instead of the embedded gallery "
                        "(queries: the embedded gallery's captions)")
    args = p.parse_args(argv)
    setup_logging("INFO", packages=("upperson", "demo"))
    if args.browser:
        return browser_benchmark(args)

    from demo.gallery import dataset_gallery
    from demo.search import SearchEngine
    from upperson.embedded import cache_dir, embedded_available, embedded_data_root, load_embedded_model

    model = load_embedded_model("upperson")
    gallery = dataset_gallery("toypedes", embedded_data_root(args.toypedes_preset, splits=["test"]), "test")
    engine = SearchEngine(model, gallery, cache_dir=cache_dir(), query_threads=args.threads,
                          index_threads=max(1, min(4, os.cpu_count() or 1)))
    torch.set_num_threads(args.threads)  # ranking runs outside the engine's thread switch here
    captions = [c for it in engine.gallery.items for c in it.captions]
    rng = np.random.default_rng(0)
    queries = [captions[i] for i in rng.integers(0, len(captions), args.queries + args.warmup)]

    feats = engine.features("UP-Person")
    dim = feats.shape[1]
    g = torch.Generator().manual_seed(0)
    store = F.normalize(torch.randn(args.store, dim, generator=g), dim=-1)
    token_lengths = [int(engine.prepare(q).tokens.argmax(-1)) + 1 for q in queries]

    with torch.inference_mode():
        emb = _measure(engine, queries, feats, args.top_k, args.warmup)
        big = _measure(engine, queries, store, args.top_k, args.warmup)
        t = []
        qv = engine.encode_query(engine.prepare(queries[0]).tokens)
        for i in range(args.queries + args.warmup):
            t0 = time.perf_counter()
            engine.rank(store, qv, args.top_k)
            if i >= args.warmup:
                t.append((time.perf_counter() - t0) * 1000.0)
        rank_only = np.asarray(t)

    print(f"model {model.config.name}{'' if embedded_available() else ' (random weights: no embedded assets)'}, "
          f"embedding dim {dim}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}")
    print(f"queries: gallery captions, {np.mean(token_lengths):.0f} tokens on average; top-k {args.top_k}")
    print(_row(f"embedded gallery ({feats.shape[0]} images)", emb))
    print(_row(f"synthetic store ({args.store} images)", big))
    print(_row("  of which ranking alone (100k)" if args.store == 100_000 else "  of which ranking alone", rank_only))
    return 0


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# Click Search, then wait until the status shows this query and all k result images are loaded.
_ROUND_TRIP_JS = """async ([needle, k]) => {
  const done = () => {
    const st = document.querySelector('#status');
    if (!st || !st.innerText.includes(needle)) return false;
    const imgs = [...document.querySelectorAll('#results img')];
    return imgs.length === k && imgs.every(i => i.complete && i.naturalWidth > 0);
  };
  const t0 = performance.now();
  document.querySelector('#search').click();
  while (!done()) {
    await new Promise(r => setTimeout(r, 2));
    if (performance.now() - t0 > 60000) return -1;
  }
  return performance.now() - t0;
}"""


def browser_benchmark(args: argparse.Namespace) -> int:
    """p50/p95 of the search round-trip in headless Chromium and through gradio_client, on the embedded app."""
    import socket

    from playwright.sync_api import sync_playwright

    from demo.app import build_app, launch
    from demo.gallery import dataset_gallery
    from demo.search import SearchEngine
    from upperson.embedded import cache_dir, embedded_data_root, load_embedded_model

    from demo.gallery import folder_gallery

    embedded = dataset_gallery("toypedes", embedded_data_root(args.toypedes_preset, splits=["test"]), "test")
    gallery = folder_gallery(args.gallery) if args.gallery else embedded
    engine = SearchEngine(load_embedded_model("upperson"), gallery, cache_dir=cache_dir(), query_threads=args.threads,
                          index_threads=max(1, min(4, os.cpu_count() or 1)), progress=False)
    captions = sorted({" ".join(c.split()) for it in embedded.items for c in it.captions})
    rng = np.random.default_rng(0)
    n = min(len(captions), args.queries + args.warmup)
    queries = [captions[i] for i in rng.choice(len(captions), n, replace=False)]
    app = build_app(engine, default_top_k=args.top_k)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, roots=engine.gallery.roots, port=port, prevent_thread_lock=True, quiet=True)
    page_ms, client_ms = [], []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            box = page.locator("#query textarea")
            box.wait_for(timeout=60_000)
            page.locator("#topk input[type=number]").fill(str(args.top_k))
            page.locator("#topk input[type=number]").press("Enter")
            for i, q in enumerate(queries):
                box.fill(q)
                ms = page.evaluate(_ROUND_TRIP_JS, [q[:60], args.top_k])
                if ms < 0:
                    raise SystemExit(f"error: no results for query {i} within 60 s")
                if i >= args.warmup:
                    page_ms.append(ms)
            browser.close()
        from gradio_client import Client

        client = Client(url + "/", verbose=False)  # default settings: result images are downloaded
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            client.predict(q, "", args.top_k, False, api_name="/search")
            if i >= args.warmup:
                client_ms.append((time.perf_counter() - t0) * 1000.0)
        client.close()
    finally:
        app.close()
    print(f"{engine.gallery.name} ({len(engine.gallery)} images), top-k {args.top_k}; {os.cpu_count()} CPU(s), "
          f"{platform.processor() or platform.machine()}; one query at a time")
    print(_row("browser: click to all results shown", np.asarray(page_ms)))
    print(_row("gradio_client (downloads results)", np.asarray(client_ms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
