"""Query latency of the demo's search: text encoding plus ranking, p50 and p95.

``python -m demo.benchmark`` (or ``python -m demo --benchmark``) measures, one query at a
time as the app serves them, on

1. the embedded gallery (ToyPEDES test split, features from the embedding cache), and
2. a synthetic store of 100,000 random unit image embeddings (the ranking cost at scale).

Each measurement is ``engine.prepare`` (clean + tokenise) + ``encode_query`` (padding
trimmed) + ``rank`` (similarity and top-k). Image embedding is a one-off cost, not counted.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

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


if __name__ == "__main__":
    raise SystemExit(main())
