"""``python -m upperson evaluate``: text-to-image metrics of a run, a checkpoint or a config."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("upperson.evaluate")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run, a PETL checkpoint, or a config (zero-shot)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a run folder written by `train` (its best checkpoint)")
    src.add_argument("--checkpoint", help="a PETL checkpoint folder (petl.safetensors + petl.json)")
    src.add_argument("--config", help="a preset or YAML: evaluate its model as built (e.g. zero-shot)")
    p.add_argument("--data-root", required=True, help="folder that holds the dataset")
    p.add_argument("--dataset", help="dataset name (default: the run's or config's)")
    p.add_argument("--split", default="test", choices=["test", "val"], help="split to evaluate (default: test)")
    p.add_argument("--pretrained", help="backbone weights for the checkpoint (default: the path it recorded)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --config: override a field (with --run/--checkpoint: only data.skip_bad_images)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip missing or unreadable images (counted and warned about) instead of stopping; "
                        "same as --set data.skip_bad_images=true")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--json", dest="json_out", help="also write the metrics (and their intervals, `ci`) to this JSON file")
    p.add_argument("--per-query", dest="per_query", metavar="OUT.csv",
                   help="also write one row per query: index, pid, image, caption, images of its pid, "
                        "rank of the first match, AP, INP (docs/statistics.md)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the 95%% intervals (default 2000)")
    p.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.io import check_writable_file

    # the cheap checks first, before the heavy imports and long before the model runs
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: give a batch size >= 1")
    if args.resamples < 1:
        raise ValueError(f"--resamples {args.resamples}: give a positive number of bootstrap resamples (e.g. 2000)")
    if args.json_out:
        check_writable_file(Path(args.json_out), "--json file")
    if args.per_query:
        check_writable_file(Path(args.per_query), "--per-query file")

    # the heavy imports (torch, open_clip) only after the cheap checks
    from upperson.config import load_config
    from upperson.evaluation_report import evaluate_split
    from upperson.model import build_model
    from upperson.runtime import resolve_device, seed_everything
    from upperson.sources import SourceSpec, load_source
    from upperson.train.run import Run

    dataset = args.dataset
    precision = "bf16"
    held_out = (None, 0)  # a run's or config's data.val_from_train (and its seed): its val split
    skip_bad_images = args.skip_bad_images or _skip_from_overrides(args)
    if args.run:
        run = Run(args.run)
        if not run.config_file.exists():
            hint = "; it is a checkpoint folder: use --checkpoint" if (run.path / "petl.json").exists() else ""
            raise FileNotFoundError(f"{run.path} is not a run folder (no config.yaml){hint}")
        cfg = run.config()
        dataset = dataset or cfg.data.dataset
        precision = cfg.train.precision
        held_out = (cfg.data.val_from_train, cfg.data.val_from_train_seed)
        model = load_source(SourceSpec(checkpoint=run.best_checkpoint(log), pretrained=args.pretrained)).model
    elif args.checkpoint:
        model = load_source(SourceSpec(checkpoint=args.checkpoint, pretrained=args.pretrained)).model
        dataset = dataset or "cuhk-pedes"
    else:
        cfg = load_config(args.config, args.overrides)
        dataset = dataset or cfg.data.dataset
        precision = cfg.train.precision
        skip_bad_images = skip_bad_images or cfg.data.skip_bad_images
        held_out = (cfg.data.val_from_train, cfg.data.val_from_train_seed)
        # untrained PETL parts (the prefix's uniform init is not a no-op) are drawn from the
        # config's seed, so evaluating the same config twice gives the same numbers
        seed_everything(cfg.train.seed)
        model = build_model(cfg.model)
    model = model.to(resolve_device(args.device)).eval()
    report = evaluate_split(model, dataset, args.data_root, args.split, skip_bad_images=skip_bad_images,
                            batch_size=args.batch_size, precision=precision, resamples=args.resamples,
                            seed=args.ci_seed, val_from_train=held_out[0], val_from_train_seed=held_out[1])
    print("\n".join(report.lines()))
    if args.per_query:
        report.write_per_query(Path(args.per_query))
    if args.json_out:
        report.write_json(Path(args.json_out))
    return 0


def _skip_from_overrides(args: argparse.Namespace) -> bool:
    """``--set data.skip_bad_images=...`` with --run/--checkpoint, where no other key applies
    (with --config every key goes to the config)."""
    # imported here, not at the top: upperson.config imports the PETL layers (torch)
    from upperson.config import ConfigError, parse_override

    if args.config:
        return False
    skip = False
    for item in args.overrides:
        key, value = parse_override(item)
        if key != ["data", "skip_bad_images"]:
            raise ConfigError(f"--set {item}: with --run or --checkpoint only data.skip_bad_images can be set "
                              "(the model and its settings are the checkpoint's); use --config to override others")
        if not isinstance(value, bool):
            raise ConfigError(f"--set {item}: data.skip_bad_images must be true or false")
        skip = value
    return skip
