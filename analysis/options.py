"""Option vocabulary shared by the parser, the checks and the commands of ``python -m analysis``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

DEFAULT_OUT = "figures"

INDEX_OPTIONS = (("layers", "--layers"), ("text_layers", "--text-layers"), ("heads", "--heads"),
                  ("text_heads", "--text-heads"))


def default_runs_dir() -> Path:
    return Path("runs") / "ablation"


def split_names(spec: Optional[str]) -> Optional[list[str]]:
    return [s.strip() for s in spec.split(",") if s.strip()] if spec else None


#: an ablation target's name (``--test-on NAME=ROOT``): it names files, so letters, digits, "-" and "_" only
TEST_ON_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


def parse_test_on(value: str) -> tuple[str, Path]:
    """``NAME=ROOT`` of ``--test-on``; a ValueError naming the option otherwise."""
    name, sep, root = str(value).partition("=")
    if not sep or not TEST_ON_NAME.match(name) or not root.strip():
        raise ValueError(f"--test-on {value!r}: give NAME=ROOT, NAME of letters, digits, '-' or '_' (it names the "
                         "per-query files), ROOT the target's data folder")
    path = Path(root).expanduser()
    if not path.exists():
        raise ValueError(f"--test-on {name}={root}: no such path; give the target's data folder")
    return name, path
