"""``python -m upperson train``: train a preset or YAML config into a run folder."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train UP-Person (or a baseline) and select the best checkpoint",
                       description="Train on one GPU, a CPU, or many GPUs/processes with torchrun.")
    p.add_argument("--config", default="cuhk-pedes", help="preset name or YAML path (default: cuhk-pedes)")
    p.add_argument("--data-root", help="folder that holds the dataset (sets data.root)")
    p.add_argument("--output", required=True, help="run folder to write")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. train.epochs=10 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last state")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute block activations in backward: less memory, slower steps (train.grad_checkpointing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from upperson.config import load_config
    from upperson.train import train

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={json.dumps(str(args.data_root))}")
    if args.grad_checkpointing:
        overrides.append("train.grad_checkpointing=true")
    cfg = load_config(args.config, overrides)
    results = train(cfg, args.output, resume=args.resume, device=args.device, progress=not args.no_progress)
    if results:
        print(json.dumps({split: {k: round(v, 2) for k, v in m.items() if isinstance(v, float)}
                          for split, m in results["metrics"].items()}))
    return 0
