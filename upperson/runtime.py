"""Devices, precision and seeding: the few runtime choices shared by every command."""

from __future__ import annotations

import contextlib
import random
from typing import ContextManager, Optional

import numpy as np
import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: Optional[str] = None) -> torch.device:
    """``cuda`` when available (or asked for), else ``cpu``; a clear error for a missing GPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Mixed precision on GPU (bf16 or fp16); a no-op on CPU or for fp32."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_DTYPES[precision])


def half_dtype(precision: str) -> torch.dtype:
    """The half dtype a frozen backbone is stored in on GPU for ``precision``."""
    return torch.float16 if precision == "fp16" else torch.bfloat16


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

