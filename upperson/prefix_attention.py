"""How much each token attends to the learned prefix: the model's own attention probabilities.

One computation for the demo's heatmap (``demo/heatmap.py``) and the analysis figures
(``analysis/attention.py``): :func:`record_prefix_mass` runs the model on one image (and one
caption) under ``UPPerson.record_attention()`` and keeps, per layer and head, the softmax mass
``m`` on the prefix keys (before S-Prefix's lambda); :func:`patch_prefix_map` turns the image
part into one map of the weight the prefix values really get, ``lambda * m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import torch

from upperson.model import UPPerson
from upperson.model.attention import AttentionProbs


@dataclass(frozen=True)
class PrefixMass:
    """Prefix attention mass of one image and, optionally, one caption, every layer and head.

    ``image`` is (layers, heads, 1 + gh*gw) float32 on CPU: index 0 is CLS, then the patch
    grid row by row. ``text`` is (layers, heads, context) or None. A layer without a prefix
    is a row of nan. ``scales`` is the model's :meth:`UPPerson.prefix_scales` (lambda per
    layer; nan without a prefix).
    """

    image: torch.Tensor
    text: Optional[torch.Tensor]
    scales: dict[str, list[float]]
    grid: tuple[int, int]


def _stack(records: Sequence[AttentionProbs], n_layers: int) -> torch.Tensor:
    """The first sample's prefix mass stacked over layers; nan rows for layers without a prefix."""
    if len(records) != n_layers:
        raise RuntimeError(f"recorded {len(records)} layers, expected {n_layers}")
    rows = []
    for r in records:
        m = r.prefix_mass()[0].float().cpu()  # (heads, L)
        rows.append(m if r.prefix_len > 0 else torch.full_like(m, math.nan))
    return torch.stack(rows)


@torch.no_grad()
def record_prefix_mass(model: UPPerson, pixels: torch.Tensor, tokens: Optional[torch.Tensor] = None) -> PrefixMass:
    """Run ``model`` (in eval mode) on one image ``(3, H, W)`` and, when given, one token row
    ``(context,)``, recording how much every query attends to the prefix in every layer."""
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    if tokens is not None and tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with model.record_attention() as rec:
            model.encode_image(pixels[:1].to(device))
            if tokens is not None:
                model.encode_text(tokens[:1].to(device))
    finally:
        model.train(was_training)
    image = _stack(rec.tower("image"), len(model.blocks("image")))
    text = _stack(rec.tower("text"), len(model.blocks("text"))) if tokens is not None else None
    grid = tuple(int(g) for g in model.clip.visual.grid_size)
    if image.shape[-1] != 1 + grid[0] * grid[1]:
        raise RuntimeError(f"image tokens {image.shape[-1]} do not match CLS + a {grid[0]}x{grid[1]} grid")
    return PrefixMass(image, text, model.prefix_scales(), grid)  # type: ignore[arg-type]


def patch_prefix_map(mass: PrefixMass, layers: Literal["last", "mean"] = "mean") -> Optional[np.ndarray]:
    """Per-patch effective weight on the prefix, ``(gh, gw)`` float32, or None without a prefix.

    For each patch, the mass on the prefix averaged over heads, times that layer's lambda;
    then the last prefixed layer's map or the mean over the prefixed layers.
    """
    gh, gw = mass.grid
    maps = [m.mean(0)[1:1 + gh * gw] * lam for m, lam in zip(mass.image, mass.scales["image"])
            if math.isfinite(lam)]
    if not maps:
        return None
    chosen = maps[-1] if layers == "last" else torch.stack(maps).mean(0)
    return chosen.reshape(gh, gw).numpy().astype(np.float32)
