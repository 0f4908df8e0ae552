"""``python -m upperson index``: encode a gallery (a folder tree or a list of files) into an index folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--checkpoint / --run / --pretrained: the model (default: the embedded one)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a PETL checkpoint folder (default: the embedded model)")
    src.add_argument("--run", help="a training run folder (its best checkpoint)")
    p.add_argument("--pretrained", help="backbone weights for the checkpoint (default: the path it recorded)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index", help="encode a gallery of images into an index folder (incremental, resumable)",
        description="Encode every image under GALLERY (a folder, recursively; or a text file listing one path a "
                    "line) into the index folder --out: checksummed feature segments plus a manifest "
                    "(docs/search.md). Only new or changed files are encoded; after Ctrl-C the same command "
                    "continues; unreadable or oversized files are skipped and named.")
    p.add_argument("gallery", metavar="GALLERY", type=Path, help="a folder of images, or a list of files")
    p.add_argument("--out", required=True, type=Path, metavar="INDEX", help="the index folder (created or updated)")
    add_model_options(p)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="stored feature type (default float32; float16 halves the disk and memory, and rounds "
                        "the scores)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--segment-rows", type=int, default=4096,
                   help="new images per appended segment, the unit that survives an interruption (default 4096)")
    p.add_argument("--max-bytes", type=float, default=50.0, metavar="MB", help="skip files larger than this (default 50 MB)")
    p.add_argument("--max-pixels", type=float, default=50.0, metavar="MP",
                   help="skip images with more megapixels than this, read from the header (default 50)")
    p.add_argument("--approximate", action="store_true",
                   help="also build an IVF-PQ index (opt-in; >= 10,000 images) and report its measured recall@10")
    p.add_argument("--ann-kind", choices=["ivfpq", "ivfflat"], default="ivfpq",
                   help="approximate index: IVF-PQ (compact codes, default) or IVF-flat (full features, 4 x dim bytes "
                        "an image); both re-rank exactly")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: about 4 sqrt(images))")
    p.add_argument("--nprobe", type=int, default=None, help="lists probed per query (default: 5%% of the lists)")
    p.add_argument("--rerank", type=int, default=256, help="candidates re-scored exactly (default 256)")
    p.add_argument("--compact", action="store_true",
                   help="write the gallery's entries as one table (an update otherwise appends a table of what "
                        "changed; past 16 tables they are compacted anyway)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the cheap checks first, before torch and the model load
    for name in ("batch_size", "segment_rows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a number >= 1")
    for name in ("max_bytes", "max_pixels"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a positive number")
    if (args.nlist is not None or args.nprobe is not None or args.ann_kind != "ivfpq") and not args.approximate:
        raise ValueError("--nlist/--nprobe/--ann-kind set the approximate index: add --approximate")
    if not args.gallery.exists():
        raise FileNotFoundError(f"gallery {args.gallery} does not exist: give a folder of images or a list of files")

    from upperson.search.approximate import AnnConfig
    from upperson.search.build import BuildLimits, build_index
    from upperson.search.shards import Shard
    from upperson.sources import load_source
    from upperson.train.distributed import cleanup, init_distributed

    ann = AnnConfig(nlist=args.nlist, nprobe=args.nprobe, rerank=args.rerank, kind=args.ann_kind) if args.approximate else None
    limits = BuildLimits(max_bytes=int(args.max_bytes * 1024 * 1024), max_pixels=int(args.max_pixels * 1_000_000))
    dist = init_distributed(args.device)  # under torchrun: one shard per process
    source = load_source(args.checkpoint, args.run, pretrained=args.pretrained)
    model = source.model.to(dist.device).eval()
    label = "embedded" if source.checkpoint is None else str(source.checkpoint.resolve())
    try:
        report = build_index(model, args.gallery, args.out, source=label, dtype=args.dtype,
                             batch_size=args.batch_size, segment_rows=args.segment_rows, limits=limits,
                             progress=not args.no_progress, approximate=ann,
                             shard=Shard(dist.rank, dist.world_size), compact=args.compact)
    except KeyboardInterrupt:
        raise RuntimeError(f"interrupted: the images encoded so far are kept in {args.out}; run the same command "
                           "again to continue") from None
    finally:
        cleanup(dist)
    if not dist.is_main:
        return 0
    summary = {"index": str(report.folder), "files": report.listed, "indexed": report.indexed,
               "encoded": report.encoded, "unchanged": report.reused_unchanged,
               "same_content": report.reused_content, "skipped": len(report.skipped),
               "seconds": round(report.seconds, 2), "images_per_s": round(report.images_per_s, 1),
               **({"approximate": report.ann} if report.ann else {})}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{report.folder}: {report.indexed} of {report.listed} files indexed ({report.encoded} encoded at "
              f"{report.images_per_s:.0f} img/s, {report.reused_unchanged} unchanged, {report.reused_content} "
              f"with known content, {len(report.skipped)} skipped) in {report.seconds:.1f} s")
        if report.ann:
            a = report.ann
            codes = f"{a['m']} x {a['nbits']}-bit codes" if a.get("kind", "ivfpq") == "ivfpq" else "full features"
            print(f"approximate index: {a.get('kind', 'ivfpq')}, {a['nlist']} lists ({a['nprobe']} probed), {codes}, "
                  f"re-rank {a['rerank']}; built in {a['build_seconds']:.1f} s, {a['memory_bytes'] / 1e6:.1f} MB; "
                  f"recall@10 against exact search {a['recall_at_10']:.3f} ({a['recall_queries']} held-out image "
                  "queries)")
    return 0
