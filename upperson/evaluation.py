"""Embedding a gallery and queries, and text-to-image evaluation (SPEC 6)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from upperson.data import CaptionTokenizer, GalleryDataset, ImageRecord, QueryDataset, build_transforms
from upperson.metrics import retrieval_metrics
from upperson.model import UPPerson
from upperson.runtime import autocast

log = logging.getLogger(__name__)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_texts(model: UPPerson, tokens: torch.Tensor, batch_size: int = 512, precision: str = "bf16") -> torch.Tensor:
    """L2-normalised text features of token rows, float32 on CPU."""
    device = _device_of(model)
    out = []
    for start in range(0, len(tokens), batch_size):
        with autocast(device, precision):
            out.append(F.normalize(model.encode_text(tokens[start:start + batch_size].to(device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def embed_gallery(model: UPPerson, records: Sequence[ImageRecord], *, batch_size: int = 256, num_workers: int = 0,
                  precision: str = "bf16", progress: bool = True, cache_images: bool = False) -> torch.Tensor:
    """Normalised features of every image in ``records`` (test transform), in order."""
    dataset = GalleryDataset(records, build_transforms(model.image_size, train=False), cache_images=cache_images)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    device = _device_of(model)
    feats = []
    for batch in tqdm(loader, desc="gallery", disable=not progress, leave=False):
        with autocast(device, precision):
            f = model.encode_image(batch["image"].to(device, non_blocking=True))
        feats.append(F.normalize(f.float(), dim=-1).cpu())
    return torch.cat(feats)


@torch.no_grad()
def evaluate(model: UPPerson, records: Sequence[ImageRecord], tokenizer: CaptionTokenizer, *,
             batch_size: int = 256, num_workers: int = 0, precision: str = "bf16",
             progress: bool = True) -> dict[str, float]:
    """Text-to-image retrieval on one split: every caption queries every image (SPEC 6)."""
    was_training = model.training
    model.eval()
    try:
        gallery = embed_gallery(model, records, batch_size=batch_size, num_workers=num_workers,
                                precision=precision, progress=progress)
        queries = QueryDataset(records, tokenizer)
        text = encode_texts(model, queries.tokens, batch_size=batch_size * 2, precision=precision)
    finally:
        model.train(was_training)
    sim = text @ gallery.t()
    return retrieval_metrics(sim, torch.tensor(queries.pids), torch.tensor([r.pid for r in records]))
