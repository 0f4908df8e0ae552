"""Index lists of the command line (``--layers 0,3-5,-1``), parsed without importing torch."""

from __future__ import annotations

import re
from typing import Optional


def parse_indices(spec: Optional[str], count: int, what: str) -> Optional[list[int]]:
    """``"0,3,-1"`` or ``"0-5"`` or ``"all"`` into indices in ``range(count)`` (None = all)."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span and int(span[1]) > int(span[2]):
            raise ValueError(f"{what}: {part!r} is an empty range (write the lower end first: {span[2]}-{span[1]})")
        try:
            out.extend(range(int(span[1]), int(span[2]) + 1) if span else [int(part)])
        except ValueError:
            raise ValueError(f"{what}: cannot read {part!r} (use e.g. 0,3,-1 or 0-5 or all)") from None
    fixed = [i + count if i < 0 else i for i in out]
    bad = [o for o, i in zip(out, fixed) if not 0 <= i < count]
    if bad:
        raise ValueError(f"{what} {bad} out of range: the model has {count} ({0}..{count - 1})")
    return fixed
