"""The prefix (S-Prefix or vanilla) as a registered component: extra keys and values in each block's attention."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from upperson.petl.prefix.config import PrefixConfig
from upperson.petl.prefix.layer import Prefix, fold_prefix
from upperson.petl.registry import Component


def attach(block: nn.Module, cfg: PrefixConfig) -> None:
    """``prefix``: ``cfg.length`` keys and values of the block's width."""
    block.prefix = Prefix(block.width, cfg)


def prefix(block: nn.Module) -> Optional[Prefix]:
    """The block's prefix, for the attention (None once folded)."""
    return block.prefix


def merged_prefix(block: nn.Module) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and lambda-scaled values :func:`fold` precomputed."""
    pk = getattr(block, "prefix_k", None)
    return None if pk is None else (pk, block.prefix_v)


def fold(block: nn.Module) -> None:
    """Precompute the keys and lambda-scaled values, split across heads (buffers ``prefix_k``, ``prefix_v``)."""
    if block.prefix is not None:
        pk, pv = fold_prefix(block.prefix, block.attn.num_heads)
        block.register_buffer("prefix_k", pk, persistent=False)
        block.register_buffer("prefix_v", pv, persistent=False)
    block.prefix = None


COMPONENT = Component(
    name="prefix", config=PrefixConfig, layers=(Prefix,), markers=("prefix",),
    attach=attach, prefix=prefix, merged_prefix=merged_prefix, fold=fold,
    label="Prefix", description="S-Prefix: learnable keys and values before the tokens', lambda-scaled",
)
