"""LoRA as a registered component: a low-rank update of each block's key and value projections."""

from __future__ import annotations

import torch
from torch import nn

from upperson.petl.lora.config import LoraConfig
from upperson.petl.lora.layer import LoRA, fold_lora, lora_kv
from upperson.petl.registry import Component


def attach(block: nn.Module, cfg: LoraConfig) -> None:
    """``lora_k`` and ``lora_v``, width x width at rank ``cfg.rank``."""
    block.lora_k = LoRA(block.width, block.width, cfg.rank)
    block.lora_v = LoRA(block.width, block.width, cfg.rank)


def kv(block: nn.Module, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k + delta_k(x)``, ``v + delta_v(x)`` (a folded block has no LoRA left: unchanged)."""
    return lora_kv(block.lora_k, block.lora_v, x, k, v)


def fold(block: nn.Module) -> None:
    """``W_k += s_k B_k A_k``, ``W_v += s_v B_v A_v`` in a new frozen in-projection weight; the LoRA layers go."""
    if block.lora_k is not None or block.lora_v is not None:
        block.attn.in_proj_weight = nn.Parameter(fold_lora(block.attn, block.lora_k, block.lora_v), requires_grad=False)
    block.lora_k = block.lora_v = None


COMPONENT = Component(
    name="lora", config=LoraConfig, layers=(LoRA,), markers=("lora_k", "lora_v"),
    attach=attach, kv=kv, fold=fold, label="LoRA", description="LoRA on the key and value projections",
)
