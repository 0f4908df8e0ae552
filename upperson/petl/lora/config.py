"""Configuration of LoRA on keys and values (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class LoraConfig:
    """Low-rank updates of the key and value projections."""

    enabled: bool = True
    rank: int = 32
    depth: Optional[int] = None  # the first `depth` blocks of each tower; None = all
