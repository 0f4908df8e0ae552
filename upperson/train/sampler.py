"""Batching that does not depend on the number of processes.

Global batch ``k`` of epoch ``e`` is the same set of samples whether one process or many
train: a permutation seeded by (seed, epoch) is cut into global batches, and each rank takes
a contiguous slice of every global batch. Each sample's augmentation is seeded by
(seed, epoch, index), so it does not depend on which process or worker loads it either.
Together with gathering the features of the whole global batch for the loss, this makes a
2-process run match a 1-process run, and a resumed run match an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch; incomplete final batches are dropped."""

    def __init__(self, num_samples: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        if num_samples < global_batch:
            raise ValueError(f"only {num_samples} training samples for a batch of {global_batch}: lower data.batch_size")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        perm = torch.randperm(self.num_samples, generator=gen).tolist()
        for b in range(len(self)):
            start = b * self.global_batch + self.rank * self.local_batch
            yield perm[start:start + self.local_batch]


class SeededSamples(Dataset):
    """Wraps a dataset so that sample ``i`` of epoch ``e`` is drawn with torch seeded by (seed, e, i)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, index))
            return self.dataset[index]
