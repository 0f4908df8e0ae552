""""Why it matched": how much each image patch attends to the learned prefix, as a heatmap.

:func:`prefix_attention_map` computes the map with :mod:`upperson.prefix_attention`, as the
analysis figures do; :func:`overlay` draws it over the image.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from PIL import Image

from upperson.prefix_attention import patch_prefix_map, record_prefix_mass


def prefix_attention_map(model: torch.nn.Module, image: torch.Tensor,
                         layers: Literal["last", "mean"] = "mean") -> Optional[np.ndarray]:
    """Per-patch effective weight on the prefix, ``(gh, gw)`` float32, or None without a prefix.

    For each image token i >= 1 (the patches, row-major), the softmax mass on the prefix
    key columns, averaged over heads, times that layer's S-Prefix lambda (the weight the
    prefix values really get); then the last layer's map or the mean over layers
    (:func:`upperson.prefix_attention.patch_prefix_map`, the analysis figures' computation).
    ``image`` is one preprocessed image ``(3, H, W)``.
    """
    return patch_prefix_map(record_prefix_mass(model, image), layers)


def overlay(image: Image.Image, heat: np.ndarray, *, alpha: float = 0.5, height: int = 384,
            cmap: str = "inferno") -> Image.Image:
    """``heat`` (gh, gw) normalised to [0, 1], upsampled bilinearly and blended over ``image``."""
    from matplotlib import colormaps

    image = image.convert("RGB")
    w = max(1, round(image.width * height / max(1, image.height)))
    base = image.resize((w, height), Image.BILINEAR)
    h = heat.astype(np.float32)
    lo, hi = float(h.min()), float(h.max())
    h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    up = Image.fromarray((h * 255).astype(np.uint8), "L").resize((w, height), Image.BILINEAR)
    colours = colormaps[cmap](np.asarray(up, dtype=np.float32) / 255.0)[..., :3]
    coloured = Image.fromarray((colours * 255).astype(np.uint8), "RGB")
    return Image.blend(base, coloured, alpha)
