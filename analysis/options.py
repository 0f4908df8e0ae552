"""Option vocabulary shared by the parser, the checks and the commands of ``python -m analysis``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

DEFAULT_OUT = "figures"

INDEX_OPTIONS = (("layers", "--layers"), ("text_layers", "--text-layers"), ("heads", "--heads"),
                  ("text_heads", "--text-heads"))


def default_runs_dir() -> Path:
    return Path("runs") / "ablation"


def split_names(spec: Optional[str]) -> Optional[list[str]]:
    return [s.strip() for s in spec.split(",") if s.strip()] if spec else None
