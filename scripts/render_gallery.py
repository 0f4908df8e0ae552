"""Render a large caption-less ToyPEDES gallery for the search benchmarks (docs/performance.md).

    python scripts/render_gallery.py OUT [IDENTITIES] [WORKERS]     (from the repository root)

Draws the first IDENTITIES (default 50,000) identities of ``identity_stream(0)``, the stream
``python -m upperson toypedes`` uses, with 4 views each (front, back, side and one at random):
``OUT/imgs/<pid // 1000>/<pid>_<k>.png``, 200,000 images at the default. Deterministic per
file; each PNG is written to a temporary name and renamed, and files already there are kept,
so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing as mp
import random
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout
from upperson.data.toypedes.attributes import identity_stream  # noqa: E402
from upperson.data.toypedes.render import render  # noqa: E402

VIEWS = ("front", "back", "side")
CHUNK = 500
log = logging.getLogger("render_gallery")


def render_chunk(args: tuple[int, list, str]) -> int:
    """Render one chunk of identities (first pid, their attributes, output folder)."""
    first, idents, out = args
    for j, ident in enumerate(idents):
        pid = first + j
        views = list(VIEWS) + [random.Random(f"toy200k/{pid}/view").choice(VIEWS)]
        folder = Path(out) / "imgs" / f"{pid // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, view in enumerate(views):
            path = folder / f"{pid:06d}_{k}.png"
            if path.exists():
                continue
            img, _ = render(ident, view, random.Random(f"toy200k/{pid}/{k}"), np.random.default_rng([0, pid, k]))
            tmp = path.with_suffix(".tmp")
            img.save(tmp, format="PNG", compress_level=6)
            tmp.rename(path)
    return len(idents)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output folder (its imgs/ is the gallery)")
    p.add_argument("identities", type=int, nargs="?", default=50_000, help="identities, 4 images each")
    p.add_argument("workers", type=int, nargs="?", default=2, help="worker processes")
    args = p.parse_args(argv)
    if args.identities < 1 or args.workers < 1:
        p.error("identities and workers must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    stream = identity_stream(0)
    chunks = [(lo, list(itertools.islice(stream, min(CHUNK, args.identities - lo))), str(args.out))
              for lo in range(0, args.identities, CHUNK)]
    with mp.Pool(args.workers) as pool, tqdm(total=args.identities, unit="id") as bar:
        for n in pool.imap_unordered(render_chunk, chunks):
            bar.update(n)
    log.info("%s: %d identities, %d images", args.out / "imgs", args.identities, 4 * args.identities)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
