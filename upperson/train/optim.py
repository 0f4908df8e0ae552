"""Optimiser and learning-rate schedule (docs/method.md)."""

from __future__ import annotations

import math

import torch
from torch import nn

from upperson.config import TrainConfig
from upperson.model.upperson import component_of


def param_groups(model: nn.Module, cfg: TrainConfig, extra: list[nn.Parameter] = ()) -> list[dict]:
    """Trainable parameters grouped by learning rate and weight decay.

    No weight decay for biases and for the learnable scalars (prefix, LoRA and adapter
    scales, S-Prefix lambda); ``prefix_lr`` and ``backbone_lr`` override the base lr for
    those components when set.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        component = component_of(name)
        lr = cfg.lr
        if component == "prefix" and cfg.prefix_lr is not None:
            lr = cfg.prefix_lr
        if component == "backbone" and cfg.backbone_lr is not None:
            lr = cfg.backbone_lr
        no_decay = name.endswith("bias") or p.ndim == 0 or p.numel() == 1
        wd = 0.0 if no_decay else cfg.weight_decay
        groups.setdefault((lr, wd), []).append(p)
    for p in extra:
        groups.setdefault((cfg.lr, 0.0), []).append(p)
    return [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig, extra: list[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """Adam with the reference code's betas and eps (docs/method.md)."""
    groups = param_groups(model, cfg, list(extra))
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen (zero-shot needs no training)")
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of each group's lr in ``epoch`` (0-based): linear warm-up, then cosine to 0."""
    if epoch < cfg.warmup_epochs:
        alpha = epoch / max(1, cfg.warmup_epochs)
        return cfg.warmup_factor * (1 - alpha) + alpha
    span = max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def set_epoch_lr(optimizer: torch.optim.Optimizer, epoch: int, cfg: TrainConfig) -> float:
    """Set every group's lr for ``epoch`` (stepped per epoch); returns the factor."""
    factor = lr_factor(epoch, cfg)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return factor
