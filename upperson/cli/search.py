"""``python -m upperson search``: rank an index's images by a description (or an image)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from upperson.cli.index import add_model_options

log = logging.getLogger("upperson.search")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="rank the images of an index folder by a description, or by an image",
        description="Rank the images of INDEX (built by `python -m upperson index`) by a text description, or "
                    "with --image by their similarity to an image. The model is the one that built the index "
                    "unless --checkpoint/--run names another (it must be the same model).")
    p.add_argument("index", metavar="INDEX", type=Path, help="an index folder")
    p.add_argument("text", metavar="DESCRIPTION", nargs="?", help="what the person looks like")
    p.add_argument("--image", type=Path, help="search by this image instead of a description")
    p.add_argument("--top-k", type=int, default=10, help="results to print (default 10)")
    p.add_argument("--engine", choices=["torch", "faiss", "approximate"], default="torch",
                   help="exact search by brute force (torch, default) or FAISS's flat index (the same ranking), or "
                        "the index's IVF-PQ with an exact re-rank (built with `index --approximate`)")
    p.add_argument("--nprobe", type=int, default=None, help="approximate: lists probed (default: the index's)")
    p.add_argument("--rerank", type=int, default=None, help="approximate: candidates re-scored (default: the index's)")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.image is None):
        raise ValueError("give a DESCRIPTION or --image PATH (one of them)")
    if args.text is not None and not args.text.strip():
        raise ValueError("the description is empty: say what the person looks like")
    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k}: give a number >= 1")
    for name in ("nprobe", "rerank"):
        value = getattr(args, name)
        if value is not None and (value < 1 or args.engine != "approximate"):
            raise ValueError(f"--{name} {value}: give a number >= 1, with --engine approximate")

    from upperson.search.approximate import ApproximateSearch
    from upperson.search.engine import ExactSearch, faiss_available, recommend_engine
    from upperson.search.query import encode_query, model_for_index
    from upperson.search.store import IndexStore

    if args.engine == "faiss" and not faiss_available():
        raise ValueError("--engine faiss: the faiss package is not installed (pip install faiss-cpu)")
    store = IndexStore.open(args.index)
    model = model_for_index(store, args.checkpoint, args.run, args.pretrained)
    if not store.manifest.complete:
        log.warning("%s is incomplete (indexing was interrupted): run `python -m upperson index` again to finish it",
                    args.index)
    if args.engine == "approximate":
        engine = ApproximateSearch(store, nprobe=args.nprobe, rerank=args.rerank)
        log.info("approximate search: %d of %d lists probed, %d candidates re-ranked exactly; recall@10 %.3f at "
                 "the index's settings (measured at build, image queries)", engine.cfg.nprobe, engine.cfg.nlist,
                 engine.cfg.rerank, engine.record["recall_at_10"])
    else:
        advice = recommend_engine(len(store))
        if advice:
            log.info(advice)
        engine = ExactSearch(store, args.engine)
    query = encode_query(model, text=args.text, image=args.image)
    hits = engine.search(query, args.top_k)[0]
    if args.json:
        print(json.dumps({"index": str(args.index), "query": args.text if args.text is not None else str(args.image),
                          "by": "text" if args.text is not None else "image", "model": store.manifest.model,
                          "complete": store.manifest.complete, "images": len(store), "engine": args.engine,
                          **({"approximate": store.manifest.ann} if args.engine == "approximate" else {}),
                          "results": [{"rank": i + 1, "path": h.path, "score": h.score} for i, h in enumerate(hits)]},
                         indent=2, ensure_ascii=False))
        return 0
    for i, h in enumerate(hits):
        print(f"{i + 1:>4}  {h.score:.4f}  {h.path}")
    return 0
