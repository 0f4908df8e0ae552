"""Checks every weight file we load must pass: floating dtypes only, finite after the cast.

Used for PETL checkpoints and backbone files alike (``upperson.model.checkpoint``,
``upperson.model.backbone``). A tensor is refused by name when its dtype is not fp16, bf16
or fp32 (an integer or bool tensor, or float64, whose values may overflow in float32), or
when it is not finite once cast to the dtype the model holds it in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import torch

#: the dtypes a weight file may hold (anything else is refused by name)
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class UnsafeWeightsError(ValueError):
    """A weight file holding a tensor of a refused dtype, or values that are not finite."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. One sum first: a NaN or an inf anywhere makes the sum NaN
    or inf, so a finite sum proves it (a fifth of the CPU time of ``isfinite().all()``); only a
    non-finite sum (a bad value, or finite values whose sum overflows) checks each value."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_weights(state: Mapping[str, torch.Tensor], source: Union[str, Path],
                  dtype: torch.dtype = torch.float32) -> None:
    """Raise :class:`UnsafeWeightsError` naming ``source`` and the tensors that are not fp16,
    bf16 or fp32, or not finite after the cast to ``dtype`` (the model's)."""
    wrong = [f"{n} ({_dtype_name(t.dtype)})" for n, t in state.items() if t.dtype not in WEIGHT_DTYPES]
    if wrong:
        hint = " (save it as float32)" if any("(float64)" in w for w in wrong) else ""
        raise UnsafeWeightsError(
            f"{source}: {len(wrong)} tensor(s) of a dtype weights cannot have, e.g. {', '.join(wrong[:3])}; "
            f"weights must be float16, bfloat16 or float32{hint}"
        )
    bad = [n for n, t in state.items() if not _finite(t.to(dtype))]
    if bad:
        raise UnsafeWeightsError(
            f"{source} holds non-finite values: {len(bad)} tensor(s), e.g. {bad[:3]}, are NaN or inf once cast "
            f"to {_dtype_name(dtype)}; it cannot be used"
        )
