"""The query side of search: the model that built an index, and a query's feature."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

from upperson.data import build_tokenizer
from upperson.data.transforms import build_transforms
from upperson.evaluation import encode_texts, inference_model
from upperson.index import model_key
from upperson.model import UPPerson
from upperson.search.build import BuildLimits, load_image
from upperson.search.store import IndexFolderError, IndexStore
from upperson.sources import load_source


def model_for_index(store: IndexStore, checkpoint: Optional[str] = None, run: Optional[str] = None,
                    pretrained: Optional[str] = None) -> UPPerson:
    """The model named (default: the one the index records), refused unless it made the index's features."""
    recorded = store.manifest.model.get("source")
    if checkpoint is None and run is None and recorded not in (None, "embedded"):
        checkpoint = recorded
    model = load_source(checkpoint, run, pretrained=pretrained).model.eval()
    key = model_key(model)
    if key != store.manifest.model.get("key"):
        raise IndexFolderError(
            f"{store.folder} was built by another model ({recorded}, key {store.manifest.model.get('key')}); "
            f"this one has key {key}: search with the model that built it, or index again with this one")
    return model


def encode_query(model: UPPerson, *, text: Optional[str] = None, image: Optional[Path] = None,
                 limits: BuildLimits = BuildLimits()) -> np.ndarray:
    """The L2-normalised feature ``(1, D)`` of a description or of an image file."""
    if text is not None:
        tokens = build_tokenizer(model.config.name)([text])
        return encode_texts(inference_model(model), tokens).numpy()
    if image is None:
        raise ValueError("a query needs a description or an image")
    try:
        pixels = build_transforms(model.image_size, train=False)(load_image(Path(image), limits))
    except FileNotFoundError:
        raise FileNotFoundError(f"--image {image} does not exist") from None
    except Exception as exc:
        raise ValueError(f"--image {image}: not a readable image ({type(exc).__name__}: {exc})") from exc
    with torch.no_grad():
        return F.normalize(inference_model(model).encode_image(pixels[None]).float(), dim=-1).numpy()
