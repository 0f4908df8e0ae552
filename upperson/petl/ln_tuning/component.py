"""LN-tuning as a registered component: the blocks' LayerNorms with trainable affine parameters.

The frozen LayerNorms stay as they are (the backbone's weights and state-dict keys do not
change); the block normalises with the tuned copies instead, and a merged copy puts the
tuned ones in their place.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from upperson.petl.ln_tuning.config import LNTuningConfig
from upperson.petl.ln_tuning.layer import LNTuning, TunedNorm
from upperson.petl.registry import Component


def attach(block: nn.Module, cfg: LNTuningConfig) -> None:
    """``ln_tuning``: trainable copies of the block's ``ln_1`` and ``ln_2``."""
    block.ln_tuning = LNTuning(block.ln_1, block.ln_2)


def norm(block: nn.Module, site: str, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The tuned LayerNorm of ``site`` (None once folded: the block's own LayerNorm is then the tuned one)."""
    tuned = block.ln_tuning
    if tuned is None:
        return None
    return tuned.ln_1(x) if site == "attn" else tuned.ln_2(x)


def fold(block: nn.Module) -> None:
    """The tuned LayerNorms replace the frozen ones in the (merged) block."""
    tuned = block.ln_tuning
    if tuned is not None:
        block.ln_1, block.ln_2 = tuned.ln_1, tuned.ln_2
    block.ln_tuning = None


COMPONENT = Component(
    name="ln_tuning", config=LNTuningConfig, layers=(LNTuning, TunedNorm), markers=("ln_tuning",),
    attach=attach, norm=norm, fold=fold, label="LN-tuning",
    description="LN-tuning: the affine parameters of each block's LayerNorms train",
)
