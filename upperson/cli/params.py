"""``python -m upperson params``: trainable and total parameters per component."""

from __future__ import annotations

import argparse
import dataclasses
import json

from upperson.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="print trainable and total parameters per component")
    p.add_argument("--config", default="cuhk-pedes", help="preset name or YAML path (default: cuhk-pedes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. model.lora.rank=16 (repeatable)")
    p.add_argument("--random-init", action="store_true",
                   help="do not load backbone weights (the counts do not depend on them)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.model import build_model
    from upperson.model.params import count_parameters

    cfg = load_config(args.config, args.overrides).model
    if args.random_init:
        cfg = dataclasses.replace(cfg, pretrained="random")  # explicit, and logged as such
    report = count_parameters(build_model(cfg))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{cfg.name} at {cfg.image_size[0]}x{cfg.image_size[1]}")
        print(report.table())
    return 0
