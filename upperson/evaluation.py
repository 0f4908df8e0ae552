"""Embedding a gallery and queries, and text-to-image evaluation (docs/method.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from upperson.data import CaptionTokenizer, GalleryDataset, ImageRecord, QueryDataset, build_transforms
from upperson.metrics import PerQueryMetrics, check_finite_scores, per_query_metrics
from upperson.model import UPPerson
from upperson.runtime import autocast

log = logging.getLogger(__name__)


def _device_of(model: torch.nn.Module) -> torch.device:
    """The device of the model's weights (CPU for an encoder without any, e.g. a fixed function)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _has_half_weights(model: torch.nn.Module) -> bool:
    """Whether some weights are bf16/fp16 (a half backbone, train.amp_on_cpu): then CPU needs autocast too."""
    return any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters())


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """The merged, eval-mode copy of an UP-Person model (``model.merged()``); any other module in eval mode."""
    merge = getattr(model, "merged", None)
    if callable(merge):
        return merge()
    return model.eval()


@torch.no_grad()
def encode_texts(model: UPPerson, tokens: torch.Tensor, batch_size: int = 512, precision: str = "bf16") -> torch.Tensor:
    """L2-normalised text features of token rows, float32 on CPU."""
    device = _device_of(model)
    cpu_amp = _has_half_weights(model)
    out = []
    for start in range(0, len(tokens), batch_size):
        with autocast(device, precision, cpu=cpu_amp):
            out.append(F.normalize(model.encode_text(tokens[start:start + batch_size].to(device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def encode_images(model: torch.nn.Module, pixels: torch.Tensor, precision: str = "bf16") -> torch.Tensor:
    """L2-normalised features of one batch of preprocessed images ``(B, 3, H, W)``, float32 on CPU.

    The one image-encoding step: on the model's device, under the evaluation's mixed precision
    (:func:`upperson.runtime.autocast`: on GPU; on CPU only for a model with half weights), as
    :func:`encode_texts` encodes captions.
    """
    device = _device_of(model)
    with autocast(device, precision, cpu=_has_half_weights(model)):
        f = model.encode_image(pixels.to(device, non_blocking=True))
    return F.normalize(f.float(), dim=-1).cpu()


@torch.no_grad()
def embed_gallery(model: UPPerson, records: Sequence[ImageRecord], *, batch_size: int = 256, num_workers: int = 0,
                  precision: str = "bf16", progress: bool = True, cache_images: bool = False) -> torch.Tensor:
    """Normalised features of every image in ``records`` (test transform), in order."""
    dataset = GalleryDataset(records, build_transforms(model.image_size, train=False), cache_images=cache_images)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    feats = []
    for batch in tqdm(loader, desc="gallery", disable=not progress, leave=False):
        feats.append(encode_images(model, batch["image"], precision))
    return torch.cat(feats)


def evaluate(model: UPPerson, records: Sequence[ImageRecord], tokenizer: CaptionTokenizer, *,
             batch_size: int = 256, num_workers: int = 0, precision: str = "bf16",
             progress: bool = True) -> dict[str, float]:
    """Text-to-image retrieval on one split: every caption queries every image (docs/method.md).

    The aggregate of :func:`evaluate_per_query`: encodes with ``model.merged()`` (LoRA and
    prefix folded, same features); ``model`` itself is not changed.
    """
    return evaluate_per_query(model, records, tokenizer, batch_size=batch_size, num_workers=num_workers,
                              precision=precision, progress=progress).metrics()


@dataclass(frozen=True)
class QueryResults:
    """Per-query text-to-image results of one split, with each query's pid, source image and caption."""

    per_query: PerQueryMetrics
    pids: list[int]
    image_ids: list[int]
    texts: list[str]

    def metrics(self, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """The aggregate metrics, exactly as ``evaluate`` returns them."""
        return self.per_query.aggregate(ranks)

    def rows(self) -> list[dict]:
        """One row per query (``upperson.stats.PER_QUERY_COLUMNS``); no rank for a query without a match."""
        pq = self.per_query
        found = {int(q): n for n, q in enumerate(pq.query_index)}
        out = []
        for q, (pid, image_id, text) in enumerate(zip(self.pids, self.image_ids, self.texts)):
            n = found.get(q)
            out.append({"query_index": q, "pid": pid, "image_id": image_id, "caption": text,
                        "images": 0 if n is None else int(pq.num_relevant[n]),
                        "first_rank": None if n is None else int(pq.first_rank[n]),
                        "ap": None if n is None else float(pq.ap[n]),
                        "inp": None if n is None else float(pq.inp[n])})
        return out


@torch.no_grad()
def evaluate_per_query(model: UPPerson, records: Sequence[ImageRecord], tokenizer: CaptionTokenizer, *,
                       batch_size: int = 256, num_workers: int = 0, precision: str = "bf16",
                       progress: bool = True) -> QueryResults:
    """``evaluate``, keeping every query's rank of its first match, AP and INP."""
    was_training = model.training
    try:
        enc = inference_model(model)
        gallery = embed_gallery(enc, records, batch_size=batch_size, num_workers=num_workers,
                                precision=precision, progress=progress)
        queries = QueryDataset(records, tokenizer)
        text = encode_texts(enc, queries.tokens, batch_size=batch_size * 2, precision=precision)
        del enc
    finally:
        model.train(was_training)
    # named before any metric: which side overflowed (the similarities are checked again)
    check_finite_scores(gallery, f"the image features of {len(records)} gallery images")
    check_finite_scores(text, f"the text features of {len(queries.pids)} queries")
    pq = per_query_metrics(text @ gallery.t(), torch.tensor(queries.pids), torch.tensor([r.pid for r in records]))
    return QueryResults(pq, list(queries.pids), [image_id for _, image_id, _ in queries.items], list(queries.texts))
