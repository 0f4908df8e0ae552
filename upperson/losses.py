"""Retrieval losses: SDM (the paper's) and ITC/InfoNCE (SPEC 4)."""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from upperson.config import LossConfig

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdm_loss(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
             temperature: float = 0.02, eps: float = 1e-8) -> torch.Tensor:
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
             temperature: float = 0.02) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; the positive of row i is column i (pids unused)."""
    f = F.normalize(image_features.float(), dim=-1)
    g = F.normalize(text_features.float(), dim=-1)
    logits = f @ g.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


def build_loss(cfg: LossConfig) -> LossFn:
    """The loss function named in ``cfg``: ``fn(image_features, text_features, pids)``."""
    if cfg.name == "sdm":
        return lambda f, g, pids: sdm_loss(f, g, pids, cfg.temperature)
    if cfg.name == "itc":
        return lambda f, g, pids: itc_loss(f, g, pids, cfg.temperature)
    raise ValueError(f"unknown loss {cfg.name!r}; choose 'sdm' or 'itc'")
