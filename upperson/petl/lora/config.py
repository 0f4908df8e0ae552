"""Configuration of LoRA on keys and values (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from upperson.petl.config import ComponentConfig, require


@dataclass
class LoraConfig(ComponentConfig):
    """Low-rank updates of the key and value projections."""

    enabled: bool = True
    rank: int = 32
    depth: Optional[int] = None  # the first `depth` blocks of each tower; None = all

    def check(self) -> None:
        if self.enabled:
            require(isinstance(self.rank, int) and self.rank >= 1, "rank", ">= 1", self.rank)
