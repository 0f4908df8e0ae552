"""The in-memory form of a person-retrieval dataset: records, splits and the error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS: tuple[str, ...] = ("train", "val", "test")


class DatasetError(ValueError):
    """Any problem with a dataset on disk; the message names the file and, where it
    applies, the entry (its index and its id or path)."""


@dataclass
class ImageRecord:
    """One image and its captions."""

    path: Path  # absolute
    pid: int  # the dataset's own identity id (not re-labelled)
    captions: list[str]
    image_id: int  # index of this image within its split


@dataclass
class PedesDataset:
    """A dataset: its name, where it lives, and its records per split."""

    name: str
    root: Path
    splits: dict[str, list[ImageRecord]] = field(default_factory=dict)

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
        """A table of identities, images and captions per split, like IRRA prints."""
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
        return "\n".join(lines)
