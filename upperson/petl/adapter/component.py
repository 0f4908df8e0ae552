"""The adapters as a registered component: L-Adapter beside each LayerNorm, or sequential after each sub-layer."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from upperson.petl.adapter.config import AdapterConfig
from upperson.petl.adapter.layer import Adapter, FoldedAdapter
from upperson.petl.registry import Component

MARKERS = ("adapter_attn", "adapter_mlp")


def attach(block: nn.Module, cfg: AdapterConfig) -> None:
    """``adapter_attn`` and ``adapter_mlp`` with a bottleneck of ``width * ratio``; the placement on the block."""
    bottleneck = max(1, int(round(block.width * cfg.ratio)))
    block.adapter_attn = Adapter(block.width, bottleneck)
    block.adapter_mlp = Adapter(block.width, bottleneck)
    block.adapter_placement = cfg.placement


def _adapter(block: nn.Module, site: str) -> Optional[nn.Module]:
    return block.adapter_attn if site == "attn" else block.adapter_mlp


def before(block: nn.Module, site: str, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """L-Adapter: ``LN(x) + a * Adapter(x)``, reading the residual stream beside the LayerNorm."""
    adapter = _adapter(block, site)
    return h + adapter(x) if adapter is not None and block.adapter_placement == "parallel" else h


def after(block: nn.Module, site: str, s: torch.Tensor) -> torch.Tensor:
    """Sequential adapter: ``s + a * Adapter(s)`` on the sub-layer's output (an inner residual)."""
    adapter = _adapter(block, site)
    return s + adapter(s) if adapter is not None and block.adapter_placement == "sequential" else s


def fold(block: nn.Module) -> None:
    """Each adapter's output scale folded into its up-projection (the non-linearity stays)."""
    for name in MARKERS:
        adapter = getattr(block, name)
        if isinstance(adapter, Adapter):
            setattr(block, name, FoldedAdapter(adapter))


COMPONENT = Component(
    name="adapter", config=AdapterConfig, layers=(Adapter, FoldedAdapter), markers=MARKERS,
    attach=attach, before=before, after=after, fold=fold,
    label="Adapter", description="L-Adapter: bottleneck adapters beside each LayerNorm (or sequential)",
)
