"""Image transforms: shapes, normalisation, and the erasing fill value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from upperson.data import CLIP_MEAN, CLIP_STD, build_transforms


def _image(colour=(200, 40, 90), size=(64, 192)):
    return Image.new("RGB", size, colour)


def test_test_transform_resizes_and_normalises():
    tf = build_transforms((96, 32), train=False)
    out = tf(_image())
    assert out.shape == (3, 96, 32) and out.dtype == torch.float32
    expected = [(c / 255 - m) / s for c, m, s in zip((200, 40, 90), CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)


def test_train_transform_shape_and_randomness():
    torch.manual_seed(0)
    tf = build_transforms((96, 32), train=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 64, 3), dtype=np.uint8))
    outs = [tf(img) for _ in range(4)]
    assert all(o.shape == (3, 96, 32) for o in outs)
    assert not torch.equal(outs[0], outs[1])


def test_no_augment_only_flips():
    tf = build_transforms((96, 32), train=True, augment=False)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 32, 3), dtype=np.uint8))
    plain = build_transforms((96, 32), train=False)(img)
    torch.manual_seed(0)
    for _ in range(6):
        out = tf(img)
        assert torch.equal(out, plain) or torch.equal(out, plain.flip(-1))


@pytest.mark.parametrize("erase_value, fill", [("reference", list(CLIP_MEAN)), ("zero", [0.0, 0.0, 0.0])])
def test_random_erasing_fill(erase_value, fill):
    # a white image: after normalisation no pixel equals the fill, so erased pixels are found
    tf = build_transforms((96, 32), train=True, erase_value=erase_value)
    torch.manual_seed(3)
    white = [(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]
    found = 0
    for _ in range(20):
        out = tf(_image((255, 255, 255)))
        erased = torch.isclose(out[0], torch.tensor(fill[0])) & torch.isclose(out[1], torch.tensor(fill[1]))
        if erased.any():
            found += 1
            assert torch.allclose(out[2][erased], torch.tensor(fill[2]))
        # the rest is white or the black padding
        rest = ~erased
        black = [(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]
        ok = torch.isclose(out[0][rest], torch.tensor(white[0]), atol=1e-4) | torch.isclose(out[0][rest], torch.tensor(black[0]), atol=1e-4)
        assert ok.all()
    assert 4 <= found <= 16  # p = 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        build_transforms((96,), train=False)
    with pytest.raises(ValueError, match="erase_value"):
        build_transforms((96, 32), train=True, erase_value="mean")
