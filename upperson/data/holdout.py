"""A held-out val split for a dataset that has none (ICFG-PEDES: train and test only).

``data.val_from_train: N`` moves N whole identities of train, all their images and captions,
into a new val split, so that a checkpoint can be selected on val, never on test. Which
identities is a pure function of the train pids and ``data.val_from_train_seed``: each pid is
ranked by a keyed hash (blake2b of seed and pid), and the N lowest go; the order of the
annotation file does not matter. It is always said out loud (a WARNING and a note under the
dataset's summary table) and recorded in the run's config.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

from upperson.data.records import DatasetError, ImageRecord, PedesDataset, ReadNote

log = logging.getLogger(__name__)

#: the config key and its seed, as messages name them
OPTION, SEED_OPTION = "data.val_from_train", "data.val_from_train_seed"


def _rank(seed: int, pid: int) -> bytes:
    return hashlib.blake2b(f"{int(seed)},{int(pid)}".encode(), digest_size=16).digest()


def held_out_pids(pids: set[int], identities: int, seed: int) -> set[int]:
    """The ``identities`` pids of ``pids`` whose keyed hash with ``seed`` is lowest."""
    return set(sorted(pids, key=lambda p: (_rank(seed, p), p))[:identities])


def _renumbered(records: list[ImageRecord]) -> list[ImageRecord]:
    """``records`` with ``image_id`` their index in the new list (image_id is the index in its split)."""
    return [replace(r, image_id=i) for i, r in enumerate(records)]


def hold_out_val(data: PedesDataset, identities: int, seed: int = 0) -> PedesDataset:
    """A copy of ``data`` whose val split is ``identities`` whole identities moved out of train.

    Refused (a :class:`DatasetError` naming the option) when the dataset already has a val split
    (the given one is never replaced), when it has no train split, and when ``identities`` would
    leave train with fewer than one identity.
    """
    if identities < 1:
        raise DatasetError(f"{OPTION}={identities}: give a number of identities >= 1 (or null for none)")
    if data.splits.get("val"):
        n = len({r.pid for r in data.splits["val"]})
        raise DatasetError(f"{data.name} at {data.root} has a val split ({n} identities): {OPTION} would replace it; "
                           f"remove {OPTION} (or set it to null) to select on the dataset's own val")
    train = data.splits.get("train") or []
    if not train:
        raise DatasetError(f"{OPTION}={identities}: {data.name} at {data.root} has no train split to hold identities "
                           f"out of; remove {OPTION} (or set it to null)")
    pids = {r.pid for r in train}
    if identities >= len(pids):
        raise DatasetError(f"{OPTION}={identities}: {data.name} at {data.root} has {len(pids)} train identities; "
                           f"hold out fewer than {len(pids)} so that some remain to train on")
    moved = held_out_pids(pids, identities, seed)
    val = _renumbered([r for r in train if r.pid in moved])
    kept = _renumbered([r for r in train if r.pid not in moved])
    splits = {"train": kept, "val": val, **{k: v for k, v in data.splits.items() if k not in ("train", "val")}}
    images, captions = len(val), sum(len(r.captions) for r in val)
    why = (f"whole identities moved from train to a new val split ({OPTION}={identities}, "
           f"{SEED_OPTION}={seed}): {images} images, {captions} captions")
    out = replace(data, splits=splits, notes=[*data.notes, ReadNote("held out", "train identities", why,
                                                                     {"val": identities})])
    log.warning("%s has no val split: held out %d of %d train identities (%d images, %d captions) as val "
                "(%s=%d, %s=%d); the checkpoint is selected on them, train keeps %d identities",
                data.name, identities, len(pids), images, captions, OPTION, identities, SEED_OPTION, seed,
                len(pids) - identities)
    return out


def held_out_record(data: PedesDataset, identities: int, seed: int) -> dict:
    """What ``results.json`` records of a hold-out: the option, its seed and the val split's size."""
    ids, images, captions = data.counts("val")
    return {"identities": ids, "images": images, "captions": captions, "seed": int(seed),
            "option": f"{OPTION}={identities}"}
