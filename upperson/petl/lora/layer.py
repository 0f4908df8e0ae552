"""LoRA: a learnable low-rank update of a frozen projection (docs/method.md)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


class LoRA(nn.Module):
    """``delta(x) = s * x A^T B^T``, with A (r x d) Kaiming-uniform, B (d x r) zero, s = 1."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update to add to the frozen projection's output."""
        return (x @ self.A.t().to(x.dtype)) @ (self.B.t() * self.scale).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.A.shape[1]}, out={self.B.shape[0]}, rank={self.rank}"


def fold_lora(attn: nn.Module, lora_k: Optional[LoRA], lora_v: Optional[LoRA]) -> torch.Tensor:
    """A new in-projection weight with ``W_k += s_k B_k A_k`` and ``W_v += s_v B_v A_v`` (docs/method.md).

    Computed in float32 and stored in the frozen weight's dtype; the input weight is not touched.
    """
    weight = attn.in_proj_weight
    with torch.no_grad():
        merged = weight.detach().float().clone()
        d = merged.shape[1]
        for lora, rows in ((lora_k, slice(d, 2 * d)), (lora_v, slice(2 * d, 3 * d))):
            if lora is not None:
                merged[rows] += lora.scale.float() * (lora.B.float() @ lora.A.float())
    return merged.to(weight.dtype)


def lora_kv(lora_k: Optional[LoRA], lora_v: Optional[LoRA], x: torch.Tensor, k: torch.Tensor,
            v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values with the LoRA updates of ``x`` (the attention's input) added, in their dtype."""
    if lora_k is not None:
        k = k + lora_k(x).to(k.dtype)
    if lora_v is not None:
        v = v + lora_v(x).to(v.dtype)
    return k, v
