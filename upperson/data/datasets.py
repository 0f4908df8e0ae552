"""Torch datasets over :class:`ImageRecord` lists: training pairs, gallery images, queries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from upperson.data.records import DatasetError, ImageRecord
from upperson.data.text import CaptionTokenizer, mask_caption_tokens

Transform = Callable[[Image.Image], torch.Tensor]


class ImageStore:
    """Loads images as RGB PIL images, optionally keeping the decoded pixels in memory.

    With ``cache=True`` each image is decoded once and kept as a ``uint8`` array (3 bytes a
    pixel: a 192 x 64 ToyPEDES image is 36 KB). ``preload()`` fills the cache up front, in
    the main process, so that forked DataLoader workers share it (the datasets below call it
    when built with ``cache_images=True``); otherwise each worker would fill its own copy,
    lost when non-persistent workers end with the epoch.
    """

    def __init__(self, paths: Sequence[Path], cache: bool = False):
        self.paths = [Path(p) for p in paths]
        self.cache = cache
        self._pixels: list[Optional[np.ndarray]] = [None] * len(self.paths) if cache else []

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"{path}: image not found") from None
        except Exception as exc:
            raise DatasetError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None

    def load(self, i: int) -> Image.Image:
        if not self.cache:
            return self._decode(i)
        arr = self._pixels[i]
        if arr is None:
            arr = np.asarray(self._decode(i), dtype=np.uint8).copy()
            self._pixels[i] = arr
        return Image.fromarray(arr, mode="RGB")

    def preload(self) -> "ImageStore":
        if self.cache:
            for i in range(len(self.paths)):
                self.load(i)
        return self

    @property
    def cached_bytes(self) -> int:
        return sum(a.nbytes for a in self._pixels if a is not None) if self.cache else 0


def relabel_pids(pids: Sequence[int]) -> dict[int, int]:
    """Original pid -> 0..n-1, in sorted order of the original pids."""
    return {pid: i for i, pid in enumerate(sorted(set(pids)))}


def _mix_seed(*parts: int) -> int:
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class TrainCaptionDataset(Dataset):
    """One sample per (image, caption) pair; pids re-labelled 0..n-1 (sorted original pid).

    Item: ``image`` (float ``(3, H, W)``), ``tokens`` (long ``(context_length,)``), ``pid``
    (re-labelled), ``image_id``, ``caption_index``. With ``caption_mask_prob > 0`` the tokens
    get :func:`mask_caption_tokens`, drawn from a generator seeded by (seed, epoch, index):
    call :meth:`set_epoch` each epoch for fresh masks (with non-persistent DataLoader workers,
    which receive a fresh copy of the dataset each epoch).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Optional[Transform],
        tokenizer: CaptionTokenizer,
        *,
        caption_mask_prob: float = 0.0,
        seed: int = 0,
        cache_images: bool = False,
    ):
        if not records:
            raise DatasetError("TrainCaptionDataset: no records")
        if not 0.0 <= caption_mask_prob <= 1.0:
            raise ValueError(f"caption_mask_prob must be in [0, 1], got {caption_mask_prob}")
        self.records = list(records)
        self.transform = transform
        self.tokenizer = tokenizer
        self.caption_mask_prob = float(caption_mask_prob)
        self.seed = int(seed)
        self.epoch = 0
        self.pid_map = relabel_pids([r.pid for r in self.records])
        self.num_classes = len(self.pid_map)
        self.store = ImageStore([r.path for r in self.records], cache=cache_images).preload()
        # (record index, caption index) per sample, in record order
        self.samples: list[tuple[int, int]] = [
            (ri, ci) for ri, r in enumerate(self.records) for ci in range(len(r.captions))
        ]
        self.pids: list[int] = [self.pid_map[self.records[ri].pid] for ri, _ in self.samples]
        self.tokens = tokenizer([self.records[ri].captions[ci] for ri, ci in self.samples])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        ri, ci = self.samples[index]
        record = self.records[ri]
        image = self.store.load(ri)
        if self.transform is not None:
            image = self.transform(image)
        tokens = self.tokens[index]
        if self.caption_mask_prob > 0:
            gen = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, index))
            tokens = mask_caption_tokens(
                tokens, self.caption_mask_prob, gen,
                vocab_size=self.tokenizer.vocab_size, mask_token_id=self.tokenizer.mask_token_id,
                sot_id=self.tokenizer.sot_id, eot_id=self.tokenizer.eot_id,
            )
        else:
            tokens = tokens.clone()
        return {
            "image": image,
            "tokens": tokens,
            "pid": self.pids[index],
            "image_id": record.image_id,
            "caption_index": ci,
        }


class GalleryDataset(Dataset):
    """One item per image: ``image``, ``pid`` (original), ``index`` (position in ``records``)."""

    def __init__(self, records: Sequence[ImageRecord], transform: Optional[Transform], *, cache_images: bool = False):
        self.records = list(records)
        self.transform = transform
        self.store = ImageStore([r.path for r in self.records], cache=cache_images).preload()
        self.pids: list[int] = [r.pid for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        image = self.store.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "pid": self.records[index].pid, "index": index}


class QueryDataset(Dataset):
    """One item per caption: ``tokens``, ``pid`` (original), ``image_id``, ``text``."""

    def __init__(self, records: Sequence[ImageRecord], tokenizer: CaptionTokenizer):
        self.records = list(records)
        self.items: list[tuple[int, int, str]] = [
            (r.pid, r.image_id, cap) for r in self.records for cap in r.captions
        ]
        self.pids: list[int] = [pid for pid, _, _ in self.items]
        self.texts: list[str] = [text for _, _, text in self.items]
        self.tokens = tokenizer(self.texts)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        pid, image_id, text = self.items[index]
        return {"tokens": self.tokens[index], "pid": pid, "image_id": image_id, "text": text}
