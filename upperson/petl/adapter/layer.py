"""A bottleneck adapter with a learnable output scale (docs/method.md)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Adapter(nn.Module):
    """``scale * (W_up ReLU(W_down x + b_down) + b_up)``; zero at init (W_up, biases zero)."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution (to be added by the caller)."""
        h = F.relu(F.linear(x, self.down.weight.to(x.dtype), self.down.bias.to(x.dtype)))
        return F.linear(h, self.up.weight.to(x.dtype), self.up.bias.to(x.dtype)) * self.scale.to(x.dtype)


class FoldedAdapter(nn.Module):
    """An adapter with its output scale folded into the up-projection (inference only)."""

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        with torch.no_grad():
            scale = adapter.scale.detach().float()
            self.register_buffer("down_weight", adapter.down.weight.detach().clone())
            self.register_buffer("down_bias", adapter.down.bias.detach().clone())
            self.register_buffer("up_weight", (adapter.up.weight.detach().float() * scale).to(adapter.up.weight.dtype))
            self.register_buffer("up_bias", (adapter.up.bias.detach().float() * scale).to(adapter.up.bias.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(x, self.down_weight.to(x.dtype), self.down_bias.to(x.dtype)))
        return F.linear(h, self.up_weight.to(x.dtype), self.up_bias.to(x.dtype))
