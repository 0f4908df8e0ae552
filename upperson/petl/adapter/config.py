"""Configuration of the adapters (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class AdapterConfig:
    """Bottleneck adapters: L-Adapter (parallel to the LayerNorms) or sequential."""

    enabled: bool = True
    placement: str = "parallel"  # "parallel" = L-Adapter; "sequential" = vanilla (Houlsby) adapter
    ratio: float = 0.125  # bottleneck width = tower width * ratio (d/8)
    depth: Optional[int] = None  # the first `depth` blocks of each tower; None = all
