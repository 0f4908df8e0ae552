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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def mixed_precision(device: torch.device, precision: str, amp_on_cpu: bool = False) -> str:
    """The precision a run really uses: ``precision`` on a GPU; on CPU fp32 unless ``amp_on_cpu``."""
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
    if device.type == "cuda" or (device.type == "cpu" and amp_on_cpu):
        return precision
    return "fp32"


def autocast(device: torch.device, precision: str, *, cpu: bool = False) -> ContextManager:
    """Mixed precision (bf16 or fp16) on GPU, and on CPU when ``cpu`` is set; else a no-op.

    Without ``cpu`` a CPU run stays fp32 whatever ``precision`` says (the default: CPU
    autocast is slower than fp32 on most CPUs); with it the GPU code path runs on CPU.
    """
    if precision == "fp32" or mixed_precision(device, precision, cpu) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (pass the precision ``mixed_precision`` returned)."""
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return torch.amp.GradScaler(kind, enabled=precision == "fp16" and device.type in ("cuda", "cpu"))


def half_dtype(precision: str) -> torch.dtype:
    """The half dtype a frozen backbone is stored in under mixed ``precision``."""
    return torch.float16 if precision == "fp16" else torch.bfloat16


def return_freed_memory_to_os(threshold: int = 16 << 20) -> bool:
    """Make glibc give tensors of ``threshold`` bytes or more their own mappings (returned when freed).

    By default glibc raises its mmap threshold as large blocks are freed (up to 32 MiB), so
    activation-sized tensors then come from the heap, whose freed space mostly stays resident:
    with activation checkpointing on CPU the process's peak RSS grew by ~0.6 GB over two
    ViT-B/16 steps at batch 8 although live tensors did not. A fixed threshold costs page
    faults per step: measured on a quiet 2-core CPU (ViT-B/16, batch 8), 1 MiB gave 1.81 GB
    peak at 1.78x the step time without checkpointing, 16 MiB 2.11 GB at about 1.45x, and no
    fixed threshold 2.40 GB at 1.28x; the default is 16 MiB (docs/performance.md). Process-wide; returns False where this is not glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

