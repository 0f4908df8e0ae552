"""``python -m upperson pretrain``: CLIP-style pretraining of a backbone from scratch.

Trains every weight of the model (default: the tiny ``upp-tiny`` on the ToyPEDES weak-caption
corpus, preset ``pretrain-tiny``) with symmetric InfoNCE and a learnable temperature, then
exports the backbone as ``RUN/backbone.safetensors`` (fp16), ready for ``model.pretrained``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("upperson.pretrain")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a backbone CLIP-style (the embedded tiny model)")
    p.add_argument("--config", default=None,
                   help="preset or YAML (default: pretrain-tiny; with --resume: the run's config.yaml)")
    p.add_argument("--data-root", required=True, help="folder holding ToyPEDES-weak (python -m upperson toypedes --captions weak)")
    p.add_argument("--output", required=True, help="run folder to write")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue the run in --output (see `train --resume`)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.config import load_config
    from upperson.train.rundir import check_new_run, resume_config

    overrides = list(args.overrides) + [f"data.root={json.dumps(str(args.data_root))}"]
    if args.resume:
        cfg = resume_config(Path(args.output), overrides, config=args.config)
    else:
        cfg = load_config(args.config or "pretrain-tiny", overrides)
        check_new_run(Path(args.output))
    if cfg.model.freeze_backbone:
        raise ValueError("pretraining trains the whole backbone: model.freeze_backbone must be false")

    from upperson.model import build_model
    from upperson.model.checkpoint import export_backbone, load_petl
    from upperson.train import train
    from upperson.train.run import Run

    train(cfg, args.output, resume=args.resume, device=args.device, progress=not args.no_progress)
    model = build_model(cfg.model)
    load_petl(model, Run(args.output).best_dir)
    out = export_backbone(model, Path(args.output) / "backbone.safetensors")
    print(f"backbone written to {out}")
    return 0
