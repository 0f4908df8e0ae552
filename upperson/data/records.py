"""The in-memory form of a person-retrieval dataset: records, splits and the error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SPLITS: tuple[str, ...] = ("train", "val", "test")


_WORKER_PREFIX = "Caught DatasetError in DataLoader worker"


class DatasetError(ValueError):
    """Any problem with a dataset on disk; the message names the file and, where it
    applies, the entry (its index and its id or path).

    Raised in a DataLoader worker, torch re-raises it in the main process as
    ``DatasetError("Caught DatasetError in DataLoader worker ...\nOriginal Traceback ...")``;
    that message is cut back to the original one here (the worker's traceback is kept in
    ``worker_traceback``), so the user sees one clear line naming the file."""

    def __init__(self, message: object = "", *args: object):
        self.worker_traceback = None
        if isinstance(message, str) and message.startswith(_WORKER_PREFIX):
            self.worker_traceback = message
            marker = message.rfind("DatasetError: ")
            if marker >= 0:
                message = message[marker + len("DatasetError: "):].rstrip("\n")
        super().__init__(message, *args)


@dataclass
class ImageRecord:
    """One image and its captions."""

    path: Path  # absolute
    pid: int  # the dataset's own identity id (not re-labelled)
    captions: list[str]
    image_id: int  # index of this image within its split


@dataclass
class ReadNote:
    """Something a reader kept or skipped that a plain count would hide, per split."""

    action: str  # "kept", "skipped" or "ignored"
    what: str  # e.g. "blank captions", "images without captions"
    why: str  # what was done and why, for the summary
    per_split: dict[str, int] = field(default_factory=dict)
    count: Optional[int] = None  # for what is not per split (e.g. a file's extra CSV columns)

    @property
    def total(self) -> int:
        if not self.per_split and self.count is not None:
            return self.count
        return sum(self.per_split.values())

    def line(self) -> str:
        splits = f" ({', '.join(f'{s} {n}' for s, n in self.per_split.items())})" if self.per_split else ""
        what = self.what.split()
        if self.total == 1:  # "1 bad image", "1 image without captions"
            i = next((i for i, w in enumerate(what) if w in ("captions", "images", "columns")), None)
            if i is not None:
                what[i] = what[i][:-1]
        return f"{self.action} {self.total} {' '.join(what)}{splits}: {self.why}"


@dataclass
class PedesDataset:
    """A dataset: its name, where it lives, its records per split, and what its reader kept
    or skipped beyond plain records (``notes``, shown under the summary table)."""

    name: str
    root: Path
    splits: dict[str, list[ImageRecord]] = field(default_factory=dict)
    notes: list[ReadNote] = field(default_factory=list)

    def note(self, action: str, what: str) -> int:
        """How many items the reader ``action`` ("kept"/"skipped") as ``what``; 0 if none."""
        return sum(n.total for n in self.notes if n.action == action and n.what == what)

    def split(self, name: str) -> list[ImageRecord]:
        """The records of split ``name``; a :class:`DatasetError` if it is absent."""
        if name not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise DatasetError(f"{self.name} at {self.root}: no {name!r} split (splits present: {have})")
        return self.splits[name]

    def counts(self, name: str) -> tuple[int, int, int]:
        """(identities, images, captions) of split ``name``."""
        records = self.split(name)
        return (
            len({r.pid for r in records}),
            len(records),
            sum(len(r.captions) for r in records),
        )

    def summary(self) -> str:
        """A table of identities, images and captions per split, like IRRA prints, then one
        line per note: what was kept or skipped beyond the counted records, and why."""
        header = ("subset", "ids", "images", "captions")
        rows = [header]
        order = [s for s in SPLITS if s in self.splits] + [s for s in self.splits if s not in SPLITS]
        for name in order:
            rows.append((name, *(str(n) for n in self.counts(name))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def fmt(row: tuple[str, ...]) -> str:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            return "| " + " | ".join(cells) + " |"

        lines = [f"{self.name} ({self.root})", rule, fmt(header), rule]
        lines += [fmt(row) for row in rows[1:]]
        lines.append(rule)
        lines += [f"  {n.line()}" for n in self.notes if n.total]
        return "\n".join(lines)
