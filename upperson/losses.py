"""Retrieval losses: SDM (the paper's) and ITC/InfoNCE (docs/method.md)."""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn
from torch.nn import functional as F

from upperson.config import LossConfig



def sdm_loss(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
             temperature: Union[float, torch.Tensor] = 0.02, eps: float = 1e-8) -> torch.Tensor:
    """Similarity distribution matching (IRRA): KL(p || q) both ways, q uniform over same-pid pairs.

    Features are L2-normalised here; ``pids`` (n,) gives the identity of sample i's image and text.
    """
    f = F.normalize(image_features.float(), dim=-1)
    g = F.normalize(text_features.float(), dim=-1)
    labels = (pids.view(-1, 1) == pids.view(1, -1)).float()
    q = labels / labels.sum(dim=1, keepdim=True)
    logits_i2t = f @ g.t() / temperature
    logits_t2i = logits_i2t.t()

    def kl(logits: torch.Tensor) -> torch.Tensor:
        p = logits.softmax(dim=1)
        return (p * (logits.log_softmax(dim=1) - torch.log(q + eps))).sum(dim=1).mean()

    return kl(logits_i2t) + kl(logits_t2i)


def itc_loss(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
             temperature: Union[float, torch.Tensor] = 0.02) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; the positive of row i is column i (pids unused)."""
    f = F.normalize(image_features.float(), dim=-1)
    g = F.normalize(text_features.float(), dim=-1)
    logits = f @ g.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


class RetrievalLoss(nn.Module):
    """The configured loss as a module: ``loss(image_features, text_features, pids)``.

    With ``learnable_temperature`` (CLIP-style pretraining) the temperature is a parameter,
    stored as ``log(1 / temperature)`` and clamped at 100 as CLIP does; otherwise it is fixed.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        if cfg.name not in ("sdm", "itc"):
            raise ValueError(f"unknown loss {cfg.name!r}; choose 'sdm' or 'itc'")
        self.name = cfg.name
        init = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.learnable_temperature:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init, persistent=False)

    @property
    def temperature(self) -> torch.Tensor:
        return 1.0 / self.log_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        fn = sdm_loss if self.name == "sdm" else itc_loss
        return fn(image_features, text_features, pids, self.temperature)


def build_loss(cfg: LossConfig) -> RetrievalLoss:
    """The loss named in ``cfg``, as a module (it may hold a learnable temperature)."""
    return RetrievalLoss(cfg)
