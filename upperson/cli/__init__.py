"""The ``python -m upperson`` command line.

Each sub-command lives in its own module of this package, exposing
``add_parser(subparsers)`` and ``run(args) -> int``. Add a new one to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from upperson.logs import setup_logging

# module name in this package for each sub-command, in --help order
COMMANDS: list[str] = [
    "toypedes",
    "train",
    "evaluate",
    "compare",
    "index",
    "search",
    "pretrain",
    "export-embedded",
    "export-onnx",
    "push",
    "params",
    "benchmark",
    "doctor",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse with one ``error: ... (see PROG --help)`` line on stderr (no usage block) and exit
    status 2; its sub-command parsers are of the same class. ``--help`` still prints the whole help."""

    def error(self, message: str):  # type: ignore[override]
        self.fail(message, self.prog)

    def fail(self, message: str, prog: str):
        """Exit 2 with one ``error:`` line naming ``prog --help``."""
        self.exit(2, f"error: {' '.join(message.split())} (see {prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but unknown options point at the chosen sub-command's ``--help``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            self.fail(f"unrecognized arguments: {' '.join(extras)}", f"{self.prog} {command}" if command else self.prog)
        return parsed


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered (or just ``only``, which imports less)."""
    parser = OneLineParser(prog="python -m upperson", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only is None else [only]:
        module = importlib.import_module(f"upperson.cli.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def _chosen_command(argv: Sequence[str]) -> Optional[str]:
    """The sub-command named in ``argv`` (after the global options), if it is a known one."""
    for item in argv:
        if item in ("-v", "--verbose"):
            continue
        return item if item in COMMANDS else None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(argv))  # one command's module: its imports only
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print("error: interrupted (Ctrl-C); run the same command again to redo it", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        # user-facing errors (bad config, bad data, unreadable or unwritable files, mismatched
        # checkpoint, Ctrl-C during training): one clear line
        if args.verbose:
            raise
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug of ours: still one line, and the way to see the traceback
        if args.verbose:
            raise
        print(f"error: internal error ({type(exc).__name__}: {error_text(exc)}); rerun with -v for the "
              "traceback and report it", file=sys.stderr)
        return 2


def error_text(exc: BaseException) -> str:
    """An exception as one line: OS errors as 'what: path', several lines joined."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        hint = "; check the path's permissions, or choose another location" if isinstance(exc, PermissionError) else ""
        text = f"{exc.strerror}{where}{hint}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
