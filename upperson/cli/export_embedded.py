"""``python -m upperson export-embedded``: package tuned runs as the embedded default
(the parser; the work and its rules are in :mod:`upperson.embedded_export`)."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

#: the card's content, moved to upperson.assets; still importable from here
MOVED_TO_ASSETS = frozenset({"CI_RESAMPLES", "CI_SEED", "FT_PER_QUERY", "PAIRS", "RECIPE", "card_intervals",
                             "card_metrics", "metric_intervals", "render_card", "results_table", "tuning_entry"})


def __getattr__(name: str) -> Any:
    if name in MOVED_TO_ASSETS:
        # imported here, not at the top: `python -m upperson --help` imports every command's module
        from upperson import assets

        return getattr(assets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-embedded", help="package tuned runs as the embedded default model (assets/embedded)")
    p.add_argument("--pretrain-run", default=None,
                   help="run folder of `pretrain` (holds backbone.safetensors); default: keep the backbone in --out")
    p.add_argument("--backbone-folder", default=None,
                   help="instead of --pretrain-run: a shipped backbone folder (backbone.safetensors, SHA256SUMS, "
                        "pretrain_config.yaml, pretrain_metrics.jsonl), e.g. assets/world")
    p.add_argument("--upperson-run", required=True, nargs="+", metavar="RUN",
                   help="UP-Person's tuning runs; the best on val is shipped")
    p.add_argument("--full-finetune-run", required=True, nargs="+", metavar="RUN",
                   help="the full fine-tune's tuning runs (as many as UP-Person's); the best on val is reported")
    p.add_argument("--data-root", required=True, help="ToyPEDES data root the runs trained on (its val split)")
    p.add_argument("--test-root", default=None,
                   help="ToyPEDES data root whose test split the card reports (default: --data-root)")
    p.add_argument("--out", default=None, help="assets folder (default: assets/embedded)")
    p.add_argument("--machine", default=f"{platform.machine()}, 2 CPU cores", help="where the runs were timed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.embedded_export import ExportRequest, export_embedded

    req = ExportRequest(upperson_run=[Path(r) for r in args.upperson_run],
                        full_finetune_run=[Path(r) for r in args.full_finetune_run],
                        data_root=Path(args.data_root), test_root=Path(args.test_root) if args.test_root else None,
                        pretrain_run=Path(args.pretrain_run) if args.pretrain_run else None,
                        backbone_folder=Path(args.backbone_folder) if args.backbone_folder else None,
                        out=Path(args.out) if args.out else None, machine=args.machine)
    print(json.dumps(export_embedded(req), indent=2))
    return 0
