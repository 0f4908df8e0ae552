"""``python -m analysis <command>``: paper figures (PNG + SVG) of an UP-Person model.

Commands: attention, umap, ablation, curves, transfer, binding, report. With no options every command uses the
embedded default model and the ToyPEDES it was evaluated on; ``--checkpoint PATH`` or
``--run RUN_DIR`` with ``--data-root DIR --dataset NAME`` point it at anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Optional, Sequence

from analysis.binding.cli import binding_args, cmd_binding
from analysis.checks import validate_args
from analysis.commands import (cmd_ablation, cmd_attention, cmd_budget, cmd_curves, cmd_explain, cmd_transfer,
                               cmd_umap)
from analysis.options import DEFAULT_OUT
from analysis.transfer.options import add_transfer_args
from upperson.cli import OneLineParser


# ----------------------------------------------------------------------------- arguments


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (default: the embedded model on its ToyPEDES)")
    g.add_argument("--checkpoint", help="PETL checkpoint folder (petl.safetensors + petl.json)")
    g.add_argument("--run", dest="run_dir", metavar="RUN_DIR", help="training run folder (uses its best/ checkpoint)")
    g.add_argument("--pretrained", help="backbone weights to use instead of the path the checkpoint recorded")
    g.add_argument("--data-root", help="folder holding the dataset (default: the embedded ToyPEDES)")
    g.add_argument("--dataset", default="toypedes", help="dataset name: cuhk-pedes, icfg-pedes, rstpreid, toypedes, "
                   "generic (default: toypedes)")
    g.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split to draw images and captions from (default: test)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="skip missing images of the dataset (counted and warned about) instead of stopping")


def _attention_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attention")
    g.add_argument("--image", help="image file (default: the --index-th record of the split)")
    g.add_argument("--caption", help="caption text (default: that record's --caption-index-th caption)")
    g.add_argument("--index", type=int, default=0, help="record of the split to show (default 0)")
    g.add_argument("--caption-index", type=int, default=0, help="which of its captions (default 0)")
    g.add_argument("--layers", help="image-tower layers, e.g. 0,5,11 or 0-5 or all (default all)")
    g.add_argument("--text-layers", help="text-tower layers (default: all)")
    g.add_argument("--heads", help="heads to average, e.g. 0,1 (default all); applies to both towers")
    g.add_argument("--text-heads", help="text-tower heads, when they differ from --heads")
    g.add_argument("--quantity", default="mass", choices=("mass", "effective", "share"),
                   help="mass: softmax mass m on the prefix (before lambda); effective: lambda*m; "
                        "share: lambda*m / ((1-m) + lambda*m) (default mass)")


def _umap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("umap")
    g.add_argument("--ids", type=int, default=20, help="identities to show (default 20)")
    g.add_argument("--seed", type=int, default=0, help="seed of the identity choice and the UMAP (default 0)")
    g.add_argument("--no-links", action="store_true", help="do not link each caption to its image")
    g.add_argument("--cache-dir", help="embedding cache (default: <UPPERSON_CACHE>/index, shared with the demo)")


def _explain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("explain")
    g.add_argument("--image", help="image file (default: the --index-th record of the split)")
    g.add_argument("--caption", help="caption text (default: that record's --caption-index-th caption)")
    g.add_argument("--index", type=int, default=0, help="record of the split to explain (default 0)")
    g.add_argument("--caption-index", type=int, default=0, help="which of its captions (default 0)")
    g.add_argument("--words", help="comma-separated caption words that get their own map (default: the colour words)")
    g.add_argument("--audit", type=int, metavar="N", help="instead: the controlled ToyPEDES check on N fresh persons "
                   "(does each colour word's map land on its garment?), hit rates with bootstrap intervals")
    g.add_argument("--audit-domain", choices=("cuhk", "icfg", "rstp"),
                   help="the audit's persons as this ToyPEDES domain draws them (its clothes and camera; "
                        "default: the original ToyPEDES)")
    g.add_argument("--audit-seed", type=int, default=0, help="seed of the audit's persons and resampling (default 0)")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the audit (default 2000)")


def _ablation_args(p: argparse.ArgumentParser, *, in_report: bool = False) -> None:
    g = p.add_argument_group("ablation")
    if not in_report:
        g.add_argument("--run", action="store_true", help="train the variants (skipping complete run folders, "
                       "resuming incomplete ones) before collecting them")
        g.add_argument("--config", default="toypedes", help="base preset or YAML of the sweep (default toypedes)")
        g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a base-config field for every variant (repeatable)")
        g.add_argument("--epochs", type=int, help="training epochs of every trained variant")
        g.add_argument("--variants", help="comma-separated variants (default: all); see --list")
        g.add_argument("--list", action="store_true", help="list the variants and exit")
        g.add_argument("--force", action="store_true", help="train again even where a complete run exists")
        g.add_argument("--data-root", help="dataset folder for training (default: the embedded ToyPEDES)")
        g.add_argument("--dataset", help="dataset name (default: the base config's)")
        g.add_argument("--seeds", type=int, default=None, help="training seeds per trained variant (default 3): "
                       "train.seed = the config's seed, +1, ...; runs go to RUNS/<variant>/seed-<s>/")
        g.add_argument("--test-on", metavar="NAME=ROOT",
                       help="the table on another test split (a cross-domain ablation): each run's selected "
                            "checkpoint evaluated on ROOT's test split (reused while the checkpoint and the split are "
                            "unchanged); the dataset is --dataset's, else the base config's")
    g.add_argument("--runs-dir", default=None, help="folder of the variants' run folders (default runs/ablation)")
    g.add_argument("--csv", dest="ablation_csv", help="plot an existing ablation.csv instead of run folders "
                   "(its statistics are rebuilt from the per_query/ folder beside it, when there is one)")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals (default 2000)")
    g.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")


def _budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget")
    g.add_argument("--grid", help="grid YAML (default: analysis/budget/grid.yaml, B1-B12 and the references)")
    g.add_argument("--config", help="base preset or YAML (default: the grid's, toypedes-regime)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base-config field for every point, e.g. model.pretrained=FILE (repeatable)")
    g.add_argument("--points", help="comma-separated points (default: all), e.g. B1,B2,zero-shot")
    g.add_argument("--seeds", type=int, help="seeds per trained point (default: the grid's, 2)")
    g.add_argument("--epochs", type=int, help="training epochs of every trained point (default: the preset's)")
    g.add_argument("--data-root", help="the source's data folder (its val selects, its test is in-domain)")
    g.add_argument("--dataset", help="the source's dataset name (default: the base config's)")
    g.add_argument("--target", dest="targets", action="append", default=[], metavar="NAME=ROOT",
                   help="a cross-domain test set (repeatable): NAME=ROOT, or NAME:DATASET=ROOT when its format "
                        "differs from the source's")
    g.add_argument("--runs-dir", help="folder of the sweep's runs (default runs/budget)")
    g.add_argument("--dry-run", action="store_true", help="print the planned runs and their estimated cost; write nothing")
    g.add_argument("--collect", action="store_true", help="train nothing: table and figure from the complete runs")
    g.add_argument("--force", action="store_true", help="train again even where a complete run exists")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals (default 2000)")
    g.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        return p

    p = add("attention", "attention to the prefix per image patch and text token, per layer; and lambda")
    _model_args(p)
    _attention_args(p)
    p.set_defaults(func=cmd_attention)

    p = add("umap", "UMAP of test image and caption embeddings by identity, zero-shot beside UP-Person")
    _model_args(p)
    _umap_args(p)
    p.set_defaults(func=cmd_umap)

    p = add("explain", "why an image matched a caption: which words matched which regions (gradient x input)")
    _model_args(p)
    _explain_args(p)
    p.set_defaults(func=cmd_explain)

    p = add("ablation", "the per-component ablation: train or collect the variants, table (CSV) and figures")
    _ablation_args(p)
    p.set_defaults(func=cmd_ablation)

    p = add("budget", "the PETL budget sweep: R@1 and mAP against trainable parameters, in-domain and on targets")
    _budget_args(p)
    p.set_defaults(func=cmd_budget)

    p = add("curves", "training curves (loss and R@1 per epoch) of one or several runs")
    p.add_argument("runs", nargs="*", help="run folders or metrics.jsonl files (default: the embedded model's log, "
                   "else the shipped ablation's)")
    p.add_argument("--run", dest="run_dirs", action="append", default=[], metavar="RUN_DIR",
                   help="a run folder (repeatable; same as a positional argument)")
    p.set_defaults(func=cmd_curves)

    p = add("transfer", "cross-domain transfer: train on each source (selected on its val), test on every target")
    add_transfer_args(p)
    p.set_defaults(func=cmd_transfer)

    p = add("binding", "attribute-binding probe: minimal pairs (colour swap, bag, umbrella, hair), per-attribute accuracy")
    binding_args(p)
    p.set_defaults(func=cmd_binding)

    p = add("report", "every figure in one folder, with an index.html")
    _model_args(p)
    _attention_args(p)
    _umap_args(p)
    _ablation_args(p, in_report=True)
    p.add_argument("--curves", dest="curve_runs", action="append", default=[], metavar="RUN_DIR",
                   help="runs for the training curves (default: --run's folder, else the embedded/shipped logs)")
    p.set_defaults(func=cmd_report)
    return parser


def cmd_report(args, command: str = ""):
    """``report``: :func:`analysis.report.build_report`."""
    from analysis.report import build_report  # (matplotlib and pandas: only when the report runs, not for --help)

    return build_report(args, command=command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from upperson.logs import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO, ("analysis", "upperson"))
    if getattr(args, "no_progress", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    command = "python -m analysis " + shlex.join(argv)
    try:
        validate_args(args)
        figs = args.func(args, command=command)
    except (ValueError, RuntimeError, OSError, KeyboardInterrupt) as exc:
        # one line; -v shows the traceback. Figures and tables are written atomically (temp
        # file, then rename), so an interrupted or failed command leaves no half-written file.
        if args.verbose:
            raise
        sys.stderr.write(f"error: {_describe(exc)}\n")
        return 2
    for f in figs or []:
        sys.stdout.write(f"{f.png}\n{f.svg}\n")
    return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return ("interrupted; every file already written is complete (each is written atomically); "
                "run the same command again to finish (ablation --run and transfer resume incomplete runs)")
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}; check that this path can be written (--out, --cache-dir) and has free space"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
