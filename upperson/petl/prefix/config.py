"""Configuration of the prefix (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from upperson.petl.config import ComponentConfig, require


@dataclass
class PrefixConfig(ComponentConfig):
    """Learnable prefix keys and values, with the optional S-Prefix scale."""

    enabled: bool = True
    length: int = 10
    depth: Optional[int] = None  # the first `depth` blocks of each tower; None = all
    scaled: bool = True  # S-Prefix (learnable lambda); False = vanilla prefix, lambda = 1
    scale_init: float = 10.0  # lambda at init (paper and first code release: 10; later code: 100)
    init_range: float = 0.01  # Pk, Pv ~ uniform(0, init_range)

    def check(self) -> None:
        if self.enabled:
            require(isinstance(self.length, int) and self.length >= 1, "length", ">= 1", self.length)
