"""Prefix keys and values for one attention layer (docs/method.md)."""

from __future__ import annotations

import torch
from torch import nn

from upperson.petl.prefix.config import PrefixConfig


class Prefix(nn.Module):
    """``length`` learnable key and value vectors, inserted after the K/V projection.

    ``Pk = key_scale * key`` and ``Pv = value_scale * value`` (the reference code's scalar
    multipliers, init 1). With S-Prefix the attention on the prefix columns is multiplied
    by ``lam`` (init ``scale_init``) without re-normalising; vanilla prefix has lam = 1.
    """

    def __init__(self, width: int, cfg: PrefixConfig) -> None:
        super().__init__()
        self.length = cfg.length
        self.key = nn.Parameter(torch.empty(cfg.length, width).uniform_(0.0, cfg.init_range))
        self.value = nn.Parameter(torch.empty(cfg.length, width).uniform_(0.0, cfg.init_range))
        self.key_scale = nn.Parameter(torch.ones(1))
        self.value_scale = nn.Parameter(torch.ones(1))
        if cfg.scaled:
            self.lam = nn.Parameter(torch.full((1,), float(cfg.scale_init)))
        else:
            self.register_buffer("lam", torch.ones(1), persistent=False)

    @property
    def scaled(self) -> bool:
        """True for S-Prefix (a learnable lambda)."""
        return isinstance(self.lam, nn.Parameter)

    def keys(self) -> torch.Tensor:
        """Prefix keys ``Pk``, (length, width)."""
        return self.key * self.key_scale

    def values(self) -> torch.Tensor:
        """Prefix values ``Pv`` before the S-Prefix scale, (length, width)."""
        return self.value * self.value_scale

    def extra_repr(self) -> str:
        return f"length={self.length}, width={self.key.shape[1]}, scaled={self.scaled}"


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(P, D) -> (1, heads, P, D // heads), as the attention splits its keys and values."""
    n, d = x.shape
    return x.unsqueeze(0).view(1, n, heads, d // heads).transpose(1, 2)


def fold_prefix(prefix: Prefix, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix keys and lambda-scaled values split across heads, (1, heads, P, head_dim) each, detached.

    ``lambda * A_pre Pv = A_pre (lambda Pv)`` (docs/method.md), so the folded values give S-Prefix exactly.
    """
    with torch.no_grad():
        pk = _heads(prefix.keys().float(), heads)
        pv = _heads((prefix.values() * prefix.lam).float(), heads)
    return pk.contiguous(), pv.contiguous()
