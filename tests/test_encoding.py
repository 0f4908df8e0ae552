"""One image-encoding step (upperson.evaluation.encode_images) for the evaluation and the feature index."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_image, tiny_model_config
from upperson.data import ImageRecord
from upperson.evaluation import embed_gallery
from upperson.index import ImageIndex
from upperson.model import build_model


@pytest.fixture
def paths(tmp_path):
    return [random_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]


def _records(paths):
    return [ImageRecord(path=p, pid=i, captions=["x"], image_id=i) for i, p in enumerate(paths)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_index_encodes_images_as_the_evaluation_does(tmp_path, paths, dtype):
    """fp32 on CPU: bit for bit the evaluation's features; half weights on CPU: under autocast,
    as the evaluation runs them (the index had no autocast and failed on such a model)."""
    model = build_model(tiny_model_config()).to(dtype).eval()
    got = ImageIndex(model, tmp_path / "cache", batch_size=3, progress=False).embed(paths).features
    want = embed_gallery(model.merged(), _records(paths), batch_size=3, progress=False)
    assert got.dtype == want.dtype == torch.float32 and got.shape == (3, want.shape[1])
    assert torch.equal(got, want)
