"""``python -m upperson toypedes``: generate the ToyPEDES benchmark or its weak corpus."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    # imported here, not at the top: only when this command's parser is built
    from upperson.data.toypedes.domains import DOMAINS, WORLD
    from upperson.data.toypedes.generate import CAPTION_MODES, TOYPEDES_PRESETS

    sizes = "; ".join(f"{name}: " + (f"test only, {p.test + p.extra_test} ids" if p.test_only
                                      else f"{p.train}/{p.val}/{p.test} ids") for name, p in TOYPEDES_PRESETS.items())
    p = subparsers.add_parser(
        "toypedes",
        help="generate the ToyPEDES benchmark (CUHK-PEDES format)",
        description=(
            "Generate ToyPEDES, a synthetic text-based person retrieval benchmark, as "
            "DIR/ToyPEDES/{imgs/,reid_raw.json} in CUHK-PEDES format (train/val/test by "
            f"identity; {sizes}). --captions weak writes the weak pretraining corpus to "
            "DIR/ToyPEDES-weak/ instead. The same seed gives byte-identical files."
        ),
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="data root to write into")
    p.add_argument("--preset", choices=list(TOYPEDES_PRESETS), default="default", help="size (default: default)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--captions", choices=list(CAPTION_MODES), default="fine",
                   help="fine: the benchmark; weak: the short-caption pretraining corpus")
    p.add_argument("--workers", type=int, default=None, help="processes (default: 1 for small jobs, else the CPU count)")
    p.add_argument("--domain", choices=[*DOMAINS, WORLD], default=None,
                   help="a domain modelled on CUHK-PEDES, ICFG-PEDES or RSTPReid (docs/generalization.md); "
                        f"{WORLD} with --captions weak: the pretraining corpus of every domain "
                        "(default: the original ToyPEDES)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different dataset")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.data.toypedes.generate import generate_toypedes

    try:
        folder = generate_toypedes(args.out, preset=args.preset, seed=args.seed, captions=args.captions,
                                   workers=args.workers, overwrite=args.overwrite, domain=args.domain)
    except OSError as exc:  # read-only or full disk, --out under a file, ...: nothing half-written is left
        what = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        raise ValueError(f"cannot write ToyPEDES under --out {args.out}: {what}{where}; "
                         "choose a writable folder with free space") from exc
    domain = f", domain {args.domain}" if args.domain else ""
    print(f"ToyPEDES ({args.preset}{domain}, {args.captions} captions, seed {args.seed}) is in {folder}")
    return 0
