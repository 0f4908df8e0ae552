"""Configuration of LN-tuning (docs/components.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from upperson.petl.config import ComponentConfig


@dataclass
class LNTuningConfig(ComponentConfig):
    """Tune the affine parameters (weight and bias) of each block's two LayerNorms; off by default."""

    enabled: bool = False
    depth: Optional[int] = None  # the first `depth` blocks of each tower; None = all
