"""``python -m upperson train``: train a preset or YAML config into a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train UP-Person (or a baseline) and select the best checkpoint",
                       description="Train on one GPU, a CPU, or many GPUs/processes with torchrun.")
    p.add_argument("--config", default=None,
                   help="preset name or YAML path (default: cuhk-pedes; with --resume: the run's config.yaml)")
    p.add_argument("--data-root", help="folder that holds the dataset (sets data.root)")
    p.add_argument("--output", required=True, help="run folder to write")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. train.epochs=10 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last state, with its own config.yaml "
                        "(--set may then change only epochs, logging, workers and the data root)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute block activations in backward: less memory, slower steps (train.grad_checkpointing)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to OUTPUT/tensorboard/ (train.tensorboard)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.config import load_config
    from upperson.train.records import check_run_records
    from upperson.train.rundir import check_new_run, resume_config

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={json.dumps(str(args.data_root))}")
    if args.grad_checkpointing:
        overrides.append("train.grad_checkpointing=true")
    if args.tensorboard:
        overrides.append("train.tensorboard=true")
    # the config and the run folder are checked before the heavy imports (torch, open_clip)
    if args.resume:
        cfg = resume_config(Path(args.output), overrides, config=args.config)
        check_run_records(Path(args.output))  # state.json, metrics.jsonl and config.yaml agree (read only)
    else:
        cfg = load_config(args.config or "cuhk-pedes", overrides)
        check_new_run(Path(args.output))
    if cfg.data.root is None:
        raise ValueError("no data root: pass --data-root DIR (or --set data.root=DIR)")

    from upperson.train import train

    results = train(cfg, args.output, resume=args.resume, device=args.device, progress=not args.no_progress)
    if results:
        print(json.dumps({split: {k: round(v, 2) for k, v in m.items() if isinstance(v, float)}
                          for split, m in results["metrics"].items()}))
    return 0
