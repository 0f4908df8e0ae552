"""``python -m upperson compare A.csv B.csv [...]``: paired differences of per-query files, with intervals.

Each file after the first is compared with the first (``B - A``), metric by metric, by the
paired percentile bootstrap of ``upperson.stats`` (one resampling of the queries shared by
both files). The files must list the same queries (``stats.aligned``: query index, pid, image
id and caption key); otherwise the command names the first query that differs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from upperson import stats
from upperson.io import atomic_write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired differences (each file minus the first) of per-query files, "
                       "with bootstrap intervals", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", metavar="PER_QUERY.csv",
                   help="per-query files (evaluate --per-query, analysis ablation/transfer); the first is the reference")
    p.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples (default {stats.DEFAULT_RESAMPLES})")
    p.add_argument("--ci-seed", type=int, default=stats.DEFAULT_SEED,
                   help=f"seed of the resampling (default {stats.DEFAULT_SEED})")
    p.add_argument("--json", metavar="FILE", help="also write the differences as JSON (atomically)")
    p.set_defaults(func=run)


def compare_files(paths: list[Path], *, resamples: int = stats.DEFAULT_RESAMPLES,
                  seed: int = stats.DEFAULT_SEED) -> dict:
    """Each file's paired bootstrap against the first: ``{"reference", "comparisons": [...]}``."""
    if len(paths) < 2:
        raise ValueError(f"compare needs at least two per-query files, got {len(paths)}")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"--resamples {resamples}: give a positive number of resamples")
    for p in paths:  # a FIFO or device would block or never end: regular files only
        if p.exists() and not p.is_file():
            raise ValueError(f"{p}: not a regular file; give per-query CSV files")
    files = [stats.read_per_query_csv(p) for p in paths]
    for f in files:
        if len(f.first_rank) == 0:
            raise ValueError(f"{f.path}: no query has a match in the gallery; nothing to compare")
    stats.aligned(files)
    ref = files[0].values()
    out = []
    for path, f in zip(paths[1:], files[1:]):
        # paired_bootstrap(a, b) is a - b: the file minus the reference
        res = stats.paired_bootstrap(f.values(), ref, resamples=resamples, seed=seed)
        out.append({"file": str(path), **res})
    return {"reference": str(paths[0]), "comparisons": out}


def lines(result: dict) -> list[str]:
    """What ``compare`` prints."""
    first = result["comparisons"][0]
    head = (f"paired differences against {result['reference']}: {int(100 * first['level'])}% percentile bootstrap "
            f"over {first['queries']} queries ({first['resamples']} resamples, seed {first['seed']})")
    out = [head]
    for c in result["comparisons"]:
        out.append(f"{c['file']} - {result['reference']}:")
        for k, m in c["metrics"].items():
            star = "  *" if m["significant"] else ""
            out.append(f"  {k:5s} {m['b']:7.2f} -> {m['a']:7.2f}   "
                       f"{m['diff']:+7.2f} [{m['low']:+.2f}, {m['high']:+.2f}]  "
                       f"(differ on {100 * c['discordant'][k]:.1f}% of queries){star}")
    if any(m["significant"] for c in result["comparisons"] for m in c["metrics"].values()):
        out.append("* the interval excludes 0")
    return out


def run(args: argparse.Namespace) -> int:
    result = compare_files([Path(p) for p in args.files], resamples=args.resamples, seed=args.ci_seed)
    if args.json:  # first: a path that cannot be written fails before anything is printed
        atomic_write_json(Path(args.json), result)
    print("\n".join(lines(result)))
    return 0
