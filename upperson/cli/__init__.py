"""The ``python -m upperson`` command line.

Each sub-command lives in its own module of this package, exposing
``add_parser(subparsers)`` and ``run(args) -> int``. Add a new one to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from upperson.logs import setup_logging
from typing import Optional, Sequence

# module name in this package for each sub-command, in --help order
COMMANDS: list[str] = [
    "toypedes",
    "train",
    "evaluate",
    "pretrain",
    "export-embedded",
    "params",
    "benchmark",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="python -m upperson", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"upperson.cli.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # user-facing errors (bad config, bad data, mismatched checkpoint): one clear line
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
