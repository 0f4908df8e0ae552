"""Sharded indexing under ``torchrun``: each rank encodes its share, rank 0 merges.

``torchrun --nproc_per_node N -m upperson index GALLERY --out INDEX`` starts N processes that
join one ``torch.distributed`` group (gloo on CPU, NCCL on GPU, as training does). Rank 0
holds the index folder's lock and checks it; every rank then checks and encodes every N-th
file (by position in the sorted listing) and writes its segments into ``INDEX/segments/`` under
its own names (``r<rank>-NNNNNN.npy``), recording its progress in ``INDEX/.shards/rank-<r>.json``
after each segment. At the end rank 0 gathers the ranks' entries and writes the one manifest
atomically, in the same file order as a single process would. After an interruption, the next
run (sharded or not) first takes the ranks' progress files into the manifest, so no finished
segment is encoded again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

from upperson.io import atomic_write_json
from upperson.search.store import SEGMENTS, Entry, IndexFolderError, Manifest

log = logging.getLogger(__name__)

SHARDS = ".shards"


@dataclass(frozen=True)
class Shard:
    """This process's place among the indexing processes (one process: rank 0 of 1)."""

    rank: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.count:
            raise ValueError(f"shard rank {self.rank} of {self.count}")

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> Optional[list[Any]]:
        """Every rank's ``value``, in rank order, on rank 0 (None elsewhere)."""
        out: Optional[list[Any]] = [None] * self.count if self.rank == 0 else None
        dist.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        dist.barrier()


def progress_path(folder: Path, rank: int) -> Path:
    return folder / SHARDS / f"rank-{rank}.json"


def save_progress(folder: Path, rank: int, segments: list[dict[str, Any]], entries: dict[int, Entry],
                  first_new: int) -> None:
    """Record, atomically, the segments a rank has written (its numbers from ``first_new`` on)
    and the entries that point into them."""
    atomic_write_json(progress_path(folder, rank), {
        "segments": segments,
        "entries": [[e.path, e.segment - first_new, e.row, e.sha1, e.size, e.mtime_ns]
                    for e in entries.values() if e.segment >= first_new],
    })


def absorb_leftovers(folder: Path, manifest: Optional[Manifest], template: Manifest) -> Optional[Manifest]:
    """The manifest with the segments and entries of an interrupted sharded run's progress files
    added (marked incomplete); the progress files are removed once it is written by the caller."""
    files = sorted((folder / SHARDS).glob("rank-*.json")) if (folder / SHARDS).is_dir() else []
    if not files:
        return manifest
    base = manifest or template
    base.entries = list(base.entries)  # an EntryTable, as read, is not appended to
    added = 0
    for path in files:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            segments, entries = list(raw["segments"]), list(raw["entries"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable progress file %s (%s); its images are encoded again", path, exc)
            continue
        offset = len(base.segments)
        kept = [seg for seg in segments if (folder / SEGMENTS / str(seg.get("name"))).is_file()]
        if len(kept) != len(segments):
            log.warning("%s lists segments that are missing; its images are encoded again", path)
            continue
        base.segments.extend(segments)
        for p, s, r, h, z, m in entries:
            base.entries.append(Entry(str(p), offset + int(s), int(r), str(h), int(z), int(m)))
        added += len(entries)
    base.complete = False
    log.info("%s: took %d image(s) from an interrupted sharded run", folder, added)
    return base


def remove_progress(folder: Path) -> None:
    """Delete the ranks' progress files (after the manifest that holds their work is written)."""
    if (folder / SHARDS).is_dir():
        for p in (folder / SHARDS).iterdir():
            p.unlink(missing_ok=True)
        (folder / SHARDS).rmdir()


def check_distributed() -> None:
    """Refuse a sharded build without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        raise IndexFolderError("sharded indexing needs torch.distributed: start it with torchrun")
