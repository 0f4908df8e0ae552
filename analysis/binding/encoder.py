"""A model as the probe's :class:`~analysis.binding.scoring.Encoder`: merged, eval mode, test transform."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from upperson.data import build_tokenizer, build_transforms
from upperson.evaluation import encode_images, encode_texts, inference_model
from upperson.metrics import check_finite_scores
from upperson.model import UPPerson


class ModelEncoder:
    """L2-normalised image and caption features of ``model`` (its merged copy, as the evaluation encodes)."""

    def __init__(self, model: UPPerson, *, batch_size: int = 256):
        self.model = inference_model(model)
        self.transform = build_transforms(model.image_size, train=False)
        self.tokenizer = build_tokenizer(model.config.name)
        self.batch_size = batch_size

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        feats = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(im.convert("RGB")) for im in images[start:start + self.batch_size]])
            feats.append(encode_images(self.model, pixels))
        out = torch.cat(feats)
        check_finite_scores(out, f"the image features of {len(images)} images")
        return out.numpy()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        out = encode_texts(self.model, self.tokenizer(list(texts)), batch_size=self.batch_size * 2)
        check_finite_scores(out, f"the text features of {len(texts)} captions")
        return out.numpy()
