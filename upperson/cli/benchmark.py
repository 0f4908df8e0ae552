"""``python -m upperson benchmark``: training-step speed and memory, encoding and metrics speed.

Training (the default) compares, on synthetic batches of the configured shapes:

- ``up-person``: fused SDPA attention, text trimmed to the longest caption, and on GPU the
  frozen backbone in half precision under autocast; embeddings through ``model.merged()``;
- ``naive``: the same model computed the way research code often does it: explicit softmax
  attention over concatenated prefix keys, the full 77-token text, fp32 weights, no autocast;
- ``full-finetune``: every backbone weight trains (no PETL), under autocast on GPU.

``--grad-checkpointing`` recomputes block activations in backward for every variant. Each
variant runs in a fresh process (unless ``--no-isolate``), so its peak memory is its own:
``peak_mem_mb`` on GPU (``torch.cuda.max_memory_allocated``), the process's peak resident
set ``process_peak_rss_mb`` on CPU (it includes Python, torch and the model's weights).

``--inference`` times image encoding by plain open_clip, UP-Person and its merged copy;
``--metrics [cuhk|icfg]`` times the retrieval metrics against the previous full-sort version.

Numbers are printed, not asserted: speed belongs in a benchmark, not in a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("upperson.benchmark")

VARIANTS = ("up-person", "naive", "full-finetune")
METRIC_SIZES = {  # queries, gallery images, identities (docs/method.md test splits)
    "cuhk": (6156, 3074, 1000),
    "icfg": (19848, 19848, 1000),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="time training steps, encoding and metrics",
                       description="training-step speed and memory, encoding speed and metrics speed (see docs/performance.md)")
    p.add_argument("--config", default="cuhk-pedes", help="preset or YAML (default: cuhk-pedes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--random-init", action="store_true", help="random backbone weights (speed does not depend on them)")
    p.add_argument("--batch", type=int, default=None, help="batch size, >= 1 (default: the config's)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per variant, >= 1 (default: 10; repeats of --inference/--metrics: 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, >= 0")
    p.add_argument("--caption-tokens", type=int, default=40, help="mean caption length in tokens, 1-75 (CUHK-PEDES: ~30-40)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--no-isolate", action="store_true", help="run every variant in this process (peaks then mix)")
    p.add_argument("--inference", action="store_true",
                   help="time image encoding: plain open_clip, UP-Person, UP-Person merged")
    p.add_argument("--metrics", nargs="?", const="cuhk", choices=sorted(METRIC_SIZES),
                   help="time the retrieval metrics on a random similarity of that test set's size (default: cuhk)")
    p.add_argument("--search", action="store_true",
                   help="time gallery search (torch, FAISS exact, FAISS IVF-PQ) on synthetic galleries (docs/search.md)")
    p.add_argument("--search-sizes", default="10k,100k,1M", help="gallery sizes, e.g. 10k,100k,1M,10M (default 10k,100k,1M)")
    p.add_argument("--search-dim", type=int, default=512, help="feature dimension (default 512, ViT-B/16)")
    p.add_argument("--search-similarity", default="0.870,0.095", metavar="SAME,DIFFERENT",
                   help="mean same- and different-identity cosines of the synthetic features (default: those "
                        "measured on the embedded model's ToyPEDES test features, 0.870,0.095)")
    p.add_argument("--search-dtype", choices=["float16", "float32"], default="float16", help="stored features")
    p.add_argument("--search-nlist", type=int, default=None,
                   help="IVF lists of the approximate index (default about 4 sqrt(N); fewer lists build faster)")
    p.add_argument("--search-nprobe", type=int, default=None, help="lists probed per query (default 5 %% of the lists)")
    p.add_argument("--search-m", type=int, default=None, help="PQ sub-quantisers, bytes per code (default dim / 4)")
    p.add_argument("--search-rerank", type=int, default=256, help="candidates re-ranked exactly (default 256)")
    p.add_argument("--search-workdir", default=None,
                   help="folder for the synthetic galleries' temporary features (default: the system's temp "
                        "folder; 10M x 512 float16 is 10.2 GB)")
    p.add_argument("--search-reuse", action="store_true",
                   help="with --search-workdir: keep each synthetic gallery and its approximate index in "
                        "WORKDIR/synthetic-N-DIMd-DTYPE, and reuse them when a later run asks for the same "
                        "settings (a 10M rerun skips writing the features and building the index)")
    p.add_argument("--features", metavar="INDEX", default=None,
                   help="with --search: measure on this index folder's own features (e.g. real ToyPEDES images "
                        "indexed by `python -m upperson index`) instead of synthetic ones: exact engines, then "
                        "IVF-PQ and IVF-flat at several probe shares and re-rank depths, recall@10 against exact")
    p.add_argument("--index-files", type=int, default=None, metavar="N",
                   help="index a synthetic gallery of N files (1 in 100 not an image, one dangling link) with the "
                        "embedded model: build time, the one warning, an unchanged update and one new file "
                        "(docs/performance.md)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON")
    p.set_defaults(func=run)


def parse_sizes(text: str) -> list[int]:
    """``10k,1M`` -> [10000, 1000000]."""
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(item[-1:], 1)
        try:
            value = int(float(item[:-1] if scale > 1 else item) * scale)
        except ValueError:
            raise ValueError(f"--search-sizes: {item!r} is not a size (e.g. 10k, 1M)") from None
        if value < 1:
            raise ValueError(f"--search-sizes: {item!r} must be positive")
        sizes.append(value)
    return sizes


def _search_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    from upperson import benchmarking as bench  # torch and the model: loaded when a benchmark runs
    import torch

    from upperson.embedded import load_embedded_model
    from upperson.search.approximate import AnnConfig
    from upperson.search.benchmark import Similarity, benchmark_search, indexing_throughput

    if args.features:
        return _features_benchmark(args.features)
    sizes = parse_sizes(args.search_sizes)
    try:
        same, different = (float(x) for x in args.search_similarity.split(","))
        similarity = Similarity(same, different)
    except ValueError as exc:
        raise ValueError(f"--search-similarity {args.search_similarity}: give SAME,DIFFERENT cosines ({exc})") from None
    if args.search_dim < 8:
        raise ValueError(f"--search-dim {args.search_dim}: give a dimension >= 8")
    for flag, value in (("--search-nlist", args.search_nlist), ("--search-nprobe", args.search_nprobe),
                        ("--search-m", args.search_m), ("--search-rerank", args.search_rerank)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: give a number >= 1 (or leave it out for the default)")
    ann = AnnConfig(nlist=args.search_nlist, nprobe=args.search_nprobe, m=args.search_m, rerank=args.search_rerank)
    workdir = Path(args.search_workdir) if args.search_workdir else None
    if workdir is not None and not workdir.is_dir():
        raise ValueError(f"--search-workdir {workdir}: not a folder; create it or give another")
    if args.search_reuse and workdir is None:
        raise ValueError("--search-reuse: give --search-workdir DIR, the folder the galleries are kept in")
    log.info("search benchmark: sizes %s, %d-d %s, approximate %s", sizes, args.search_dim, args.search_dtype, ann)
    rows = benchmark_search(sizes, dim=args.search_dim, similarity=similarity, dtype=args.search_dtype, ann=ann,
                            workdir=workdir, reuse=args.search_reuse)
    for r in rows:
        recall = r.get("recall@10")
        print(f"{r['gallery']:>10,} {r['engine']:>11}: build {r['build_s']:7.2f} s, RSS {r['rss_mb']:7.0f} MB "
              f"(own {r.get('rss_anon_mb', float('nan')):.0f}, mapped files {r.get('rss_file_mb', float('nan')):.0f}), "
              f"1 query p50 {r['single_p50_ms']:8.2f} ms (p95 {r['single_p95_ms']:.2f}), 64 queries p50 "
              f"{r['batch64_p50_ms']:8.1f} ms" + (f", recall@10 {recall:.3f}" if recall is not None else ""))
    throughput = indexing_throughput(load_embedded_model("upperson").eval())
    print(f"indexing throughput, embedded model, {bench.device_label(torch.device('cpu'))}: {throughput:.0f} images/s "
          "(the image tower on random pixels; decoding not included)")
    return rows + [{"indexing_images_per_s": throughput, "model": "embedded"}]


def _features_benchmark(folder: str) -> list[dict[str, Any]]:
    """``--search --features INDEX``: engines and approximate settings on an index's own features."""
    import torch  # loaded when a benchmark runs

    from upperson.search.benchmark import benchmark_features
    from upperson.search.store import IndexStore

    store = IndexStore.open(folder)
    rows = benchmark_features(store)
    print(f"{folder}: {len(store):,} images, {store.manifest.dim}-d {store.manifest.dtype}, {torch.get_num_threads()} "
          "threads; 200 held-out stored images as queries (own row left out), recall@10 against exact")
    print(f"{'engine':<20} {'nlist':>6} {'probed':>7} {'m':>4} {'rerank':>6} {'build s':>8} {'index MB':>9} "
          f"{'recall@10':>9} {'1q p50 ms':>9} {'1q p95 ms':>9} {'64q p50 ms':>10} {'RSS MB':>7}")
    for r in rows:
        approx = "nlist" in r
        print(f"{r['engine']:<20} {r['nlist'] if approx else '':>6} {format(r['probed'], '.0%') if approx else '':>7} "
              f"{(r['m'] or '') if approx else '':>4} {r['rerank'] if approx else '':>6} "
              f"{r['build_s'] if approx else '':>8} {r['index_mb'] if approx else '':>9} "
              f"{format(r['recall@10'], '.3f') if approx else '1':>9} {r['single_p50_ms']:>9.2f} "
              f"{r['single_p95_ms']:>9.2f} {r['batch64_p50_ms']:>10.1f} {r['rss_mb']:>7.0f}")
    return rows


def check_args(args: argparse.Namespace) -> list[str]:
    """Validate the numbers and names before anything heavy runs; returns the variants."""
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1 (got {args.steps})")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1 (got {args.batch})")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0 (got {args.warmup})")
    if not 1 <= args.caption_tokens <= 75:
        raise ValueError(f"--caption-tokens must be between 1 and 75 (got {args.caption_tokens})")
    if args.inference and args.metrics:
        raise ValueError("--inference and --metrics are separate benchmarks: pass one of them")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants: unknown or empty {', '.join(unknown) or repr(args.variants)}; "
                         f"choose from {', '.join(VARIANTS)}")
    if args.json_out:
        check_json_path(args.json_out)
    return variants


def check_json_path(path: str) -> None:
    """A ``--json`` target must be a file in an existing folder: refused before any work is done."""
    out = Path(path)
    if out.is_dir() or not out.parent.is_dir():
        raise ValueError(f"--json {out}: {'is a folder' if out.is_dir() else 'its folder does not exist'}; "
                         "name a file in an existing folder")


def _index_files_benchmark(n: int) -> dict[str, Any]:
    """``--index-files N``: the bad-input gallery of issue 22 (upperson/search/filebench.py)."""
    if n < 2:
        raise ValueError(f"--index-files {n}: give a number of files >= 2")
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.search.filebench import benchmark_index_files
    from upperson.sources import load_source

    r = benchmark_index_files(load_source(None, None).model.eval(), n)
    print(f"index of {r['files']:,} files ({r['unreadable']:,} unreadable, {r['distinct_contents']} distinct contents): "
          f"files written in {r['create_s']:.1f} s; built in {r['build_s']:.1f} s ({r['build_cpu_s']:.1f} s CPU; "
          f"{r['files_per_s']:,} files/s, "
          f"{r['encoded']} encoded, {r['skipped']:,} skipped, {r['warnings']} warning); unchanged update "
          f"{r['unchanged_update_s']:.1f} s ({r['unchanged_update_cpu_s']:.1f} s CPU); one new file "
          f"{r['one_new_file_s']:.1f} s ({r['one_new_file_cpu_s']:.1f} s CPU), {r['appended_entry_bytes']:,} "
          f"bytes of entries appended (of {r['entry_bytes']:,}); {'checks passed' if r['ok'] else 'CHECKS FAILED'}")
    return r


# ----------------------------------------------------------------------------- command

def run(args: argparse.Namespace) -> int:
    variants = check_args(args)
    if args.features and not args.search:
        raise ValueError("--features INDEX measures search: pass it with --search")
    results: Any
    if args.index_files is not None:
        results = _index_files_benchmark(args.index_files)
    elif args.search:
        results = _search_benchmark(args)
    else:
        # imported here, not at the top: `python -m upperson --help` imports every command's module
        from upperson import benchmarking as bench
        from upperson.config import load_config
        from upperson.runtime import resolve_device

        if args.metrics:
            results = bench.metrics_benchmark(args.metrics, METRIC_SIZES[args.metrics], args.steps)
        else:
            cfg = load_config(args.config, args.overrides)
            base = dataclasses.replace(cfg.model, pretrained=None) if args.random_init else cfg.model
            device = resolve_device(args.device)
            precision = cfg.train.precision if device.type == "cuda" else "fp32"
            batch_size = args.batch if args.batch is not None else cfg.data.batch_size
            if args.inference:
                results = bench.inference_benchmark(base, device, precision, batch_size,
                                                    caption_tokens=args.caption_tokens, repeats=args.steps)
            else:
                results = bench.training_benchmark(variants, base, device, precision, batch_size,
                                                   caption_tokens=args.caption_tokens, steps=args.steps,
                                                   warmup=args.warmup, grad_checkpointing=args.grad_checkpointing,
                                                   isolate=not args.no_isolate,
                                                   json_out=Path(args.json_out) if args.json_out else None)
    if args.json_out:
        from upperson.io import atomic_write_json

        atomic_write_json(Path(args.json_out), results)
    return 0
