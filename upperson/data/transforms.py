"""Image transforms (docs/method.md), as the reference code builds them.

Training (``augment=True``): resize to (H, W), horizontal flip (p 0.5), pad 10 (black) and
random crop back to (H, W), to tensor, CLIP normalisation, random erasing (p 0.5, area
0.02-0.4 of the image, aspect 0.3-3.3).

"Filled with the mean": the reference calls ``T.RandomErasing(scale=(0.02, 0.4),
value=mean)`` *after* ``T.Normalize``, so the erased pixels hold the numbers
(0.481, 0.458, 0.408) in normalised units. That is not the mean colour (which would be 0
after normalisation); it is the pixel colour mean + mean * std, a light grey of about
(0.61, 0.58, 0.52). ``erase_value="reference"`` (the default) reproduces the reference;
``erase_value="zero"`` fills with the mean colour, i.e. 0 after normalisation.

Training without augmentation (``augment=False``): resize, horizontal flip, normalise (the
reference's ``aug=False`` branch). Test: resize and normalise. Resizing is bilinear with
antialiasing (torchvision's default on PIL images, as in the reference).
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision import transforms as T

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

ERASE_VALUES = ("reference", "zero")


def build_transforms(
    image_size: tuple[int, int],
    *,
    train: bool,
    augment: bool = True,
    erase_value: str = "reference",
) -> Callable[..., torch.Tensor]:
    """A transform from a PIL RGB image to a normalised float tensor ``(3, H, W)``."""
    if len(image_size) != 2 or min(int(s) for s in image_size) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size!r}")
    if erase_value not in ERASE_VALUES:
        raise ValueError(f"erase_value must be one of {ERASE_VALUES}, got {erase_value!r}")
    size = (int(image_size[0]), int(image_size[1]))
    resize = T.Resize(size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)
    normalize = T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)
    if not train:
        return T.Compose([resize, T.ToTensor(), normalize])
    if not augment:
        return T.Compose([resize, T.RandomHorizontalFlip(0.5), T.ToTensor(), normalize])
    fill = list(CLIP_MEAN) if erase_value == "reference" else 0
    return T.Compose([
        resize,
        T.RandomHorizontalFlip(0.5),
        T.Pad(10),
        T.RandomCrop(size),
        T.ToTensor(),
        normalize,
        T.RandomErasing(scale=(0.02, 0.4), value=fill),
    ])
