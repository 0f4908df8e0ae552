"""``python -m upperson push``: publish a run's (or a checkpoint's) adapter to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push", help="publish a run or checkpoint to the Hugging Face Hub (adapter, config, model card)",
        description="Build the Hub folder of RUN_OR_CHECKPOINT (petl.safetensors, petl.json and a README.md model "
                    "card from the run's results, with bootstrap intervals where the run has per_query_test.csv), "
                    "load it back and check its features, then upload it with huggingface_hub. Opt-in: needs the "
                    "network and a token (`hf auth login` or HF_TOKEN). --dry-run builds and checks the folder only.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", type=Path,
                   help="a training run folder (its best/ checkpoint and results.json) or a checkpoint folder")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub model repository (created if missing)")
    p.add_argument("--revision", metavar="BRANCH", help="the branch to push to (created if missing; default main)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--license", default="unknown", metavar="ID",
                   help="the card's license, a Hub license id such as apache-2.0 (default: unknown, with a warning)")
    p.add_argument("--pretrained", help="backbone weights for the checkpoint (default: the path it recorded)")
    p.add_argument("--dry-run", action="store_true", help="build and check the folder, upload nothing, print it")
    p.add_argument("--out", type=Path, metavar="DIR", help="keep the Hub folder at DIR (a new folder)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from upperson.hub.push import push

    result = push(args.source, args.repo, revision=args.revision, private=args.private, dry_run=args.dry_run,
                  out=args.out, license=args.license, pretrained=args.pretrained)
    summary = {"folder": str(result.folder) if (args.dry_run or args.out) else None, "repo": result.repo_id,
               "revision": result.revision, "files": result.files, "uploaded": result.uploaded}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    where = f"{result.repo_id}" + (f"@{result.revision}" if result.revision else "")
    if args.dry_run:
        print(f"dry run: nothing uploaded; the folder for {where} is {result.folder}:")
    else:
        print(f"pushed to {where}: {result.uploaded}")
    for name, digest in result.files.items():
        print(f"  {name}  sha256 {digest[:16]}...")
    return 0
