"""LN-tuning: trainable copies of a frozen block's LayerNorm affine parameters."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TunedNorm(nn.Module):
    """A LayerNorm with a trainable copy of a frozen one's ``weight`` and ``bias`` (equal to it at init).

    Computed in float32 and cast back to the input's dtype (as open_clip's LayerNorms under
    autocast), so the fp32 copy also serves a half-precision backbone.
    """

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
            raise TypeError(f"LN-tuning needs a LayerNorm with weight and bias, got {type(norm).__name__}")
        self.normalized_shape = tuple(norm.normalized_shape)
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().float().clone())
        self.bias = nn.Parameter(norm.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class LNTuning(nn.Module):
    """The tuned copies of one block's ``ln_1`` (before attention) and ``ln_2`` (before the MLP)."""

    def __init__(self, ln_1: nn.LayerNorm, ln_2: nn.LayerNorm) -> None:
        super().__init__()
        self.ln_1 = TunedNorm(ln_1)
        self.ln_2 = TunedNorm(ln_2)
