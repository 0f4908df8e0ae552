"""Configuration of the adapters (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from upperson.petl.config import ComponentConfig, require

#: where the adapters sit: "parallel" (L-Adapter, beside each LayerNorm) or "sequential" (after each sub-layer)
PLACEMENTS = ("parallel", "sequential")


@dataclass
class AdapterConfig(ComponentConfig):
    """Bottleneck adapters: L-Adapter (parallel to the LayerNorms) or sequential."""

    enabled: bool = True
    placement: str = "parallel"  # "parallel" = L-Adapter; "sequential" = vanilla (Houlsby) adapter
    ratio: float = 0.125  # bottleneck width = tower width * ratio (d/8)
    depth: Optional[int] = None  # the first `depth` blocks of each tower; None = all

    def check(self) -> None:
        require(self.placement in PLACEMENTS, "placement", "'parallel' or 'sequential'", self.placement)
        require(isinstance(self.ratio, (int, float)) and 0 < self.ratio <= 4, "ratio", "in (0, 4]", self.ratio)
