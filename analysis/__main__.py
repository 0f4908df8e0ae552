"""``python -m analysis <command>``: paper figures (PNG + SVG) of an UP-Person model.

Commands: attention, umap, ablation, curves, binding, report. With no options every command uses the
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
from analysis.commands import cmd_ablation, cmd_attention, cmd_curves, cmd_umap
from analysis.options import DEFAULT_OUT
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
    g.add_argument("--runs-dir", default=None, help="folder of the variants' run folders (default runs/ablation)")
    g.add_argument("--csv", dest="ablation_csv", help="plot an existing ablation.csv instead of run folders "
                   "(its statistics are rebuilt from the per_query/ folder beside it, when there is one)")
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

    p = add("ablation", "the per-component ablation: train or collect the variants, table (CSV) and figures")
    _ablation_args(p)
    p.set_defaults(func=cmd_ablation)

    p = add("curves", "training curves (loss and R@1 per epoch) of one or several runs")
    p.add_argument("runs", nargs="*", help="run folders or metrics.jsonl files (default: the embedded model's log, "
                   "else the shipped ablation's)")
    p.add_argument("--run", dest="run_dirs", action="append", default=[], metavar="RUN_DIR",
                   help="a run folder (repeatable; same as a positional argument)")
    p.set_defaults(func=cmd_curves)

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
                "run the same command again to finish (ablation --run resumes incomplete runs)")
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}; check that this path can be written (--out, --cache-dir) and has free space"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
