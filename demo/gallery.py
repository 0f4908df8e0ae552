"""Gallery sources: the embedded ToyPEDES test split, a dataset split, or a folder of images.

A :class:`Gallery` is a list of image files, with the person id and captions of each when
the source knows them, and the folders the app may serve files from (its ``roots``).
Folder paths chosen in the UI go through :func:`resolve_under`, which refuses anything
outside the allowed roots.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


class GalleryError(ValueError):
    """A gallery source that cannot be used (missing, empty, not allowed)."""


@dataclass
class GalleryItem:
    """One gallery image: its file, and its identity and captions when the source has them."""

    path: Path
    pid: Optional[int] = None
    captions: list[str] = field(default_factory=list)


@dataclass
class Gallery:
    """The images a query is ranked against."""

    name: str
    items: list[GalleryItem]
    roots: list[Path]  # folders holding the images (served by the app, nothing else)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_ids(self) -> bool:
        return any(it.pid is not None for it in self.items)

    @property
    def num_ids(self) -> int:
        return len({it.pid for it in self.items if it.pid is not None})

    def caption_pids(self) -> dict[str, set[int]]:
        """Normalised caption -> the identities it describes (for recognising a dataset query)."""
        out: dict[str, set[int]] = {}
        for it in self.items:
            if it.pid is None:
                continue
            for c in it.captions:
                out.setdefault(normalise_caption(c), set()).add(it.pid)
        return out

    def relative_name(self, item: GalleryItem) -> str:
        """The item's path relative to its root (what the UI and the API show; never absolute)."""
        for root in self.roots:
            try:
                return str(item.path.relative_to(root))
            except ValueError:
                continue
        return item.path.name

    def restricted_to(self, paths: Sequence[Path]) -> "Gallery":
        """The same gallery with only the items whose files are in ``paths`` (order kept)."""
        keep = set(paths)
        return Gallery(self.name, [it for it in self.items if it.path in keep], self.roots)


def normalise_caption(text: str) -> str:
    """Whitespace-collapsed, lower-case text, for matching a query to a dataset caption."""
    return " ".join(text.split()).lower()


def dataset_gallery(name: str, root: PathLike, split: str = "test") -> Gallery:
    """The images of one split of a dataset in a supported format (docs/data.md) (``cuhk-pedes``, ``toypedes``, ...)."""
    from upperson.data import DatasetError, load_dataset

    try:
        ds = load_dataset(name, root, skip_bad_images=True, check_images=False)
        records = ds.split(split)
    except DatasetError as exc:
        raise GalleryError(str(exc)) from exc
    if not records:
        raise GalleryError(f"{ds.name} at {ds.root}: the {split!r} split is empty")
    items = [GalleryItem(Path(r.path).resolve(), int(r.pid), list(r.captions)) for r in records]
    # serve the images' own folder, not the dataset root (which holds the annotations)
    image_root = Path(os.path.commonpath([str(it.path.parent) for it in items]))
    return Gallery(f"{ds.name} {split}", items, [image_root])


def embedded_gallery() -> Gallery:
    """The default: the ToyPEDES test split the embedded model was evaluated on."""
    from upperson.embedded import embedded_data_root

    g = dataset_gallery("toypedes", embedded_data_root(splits=["test"]), "test")
    g.name = "embedded " + g.name
    return g


def folder_gallery(folder: PathLike) -> Gallery:
    """Every regular, non-hidden file under ``folder`` (recursively, sorted); no identities.

    Non-image files are listed too: the index skips them, counts them and names them in
    the log, so a user sees why a file is missing from the results.
    """
    try:
        root = Path(folder).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop: RuntimeError up to Python 3.12, OSError after
        raise GalleryError(f"{folder}: cannot be followed, a symbolic link loops ({exc}); give a real folder") from None
    if not root.is_dir():
        raise GalleryError(f"{folder}: not a folder")
    files: list[Path] = []
    unreadable: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda exc: unreadable.append(str(exc.filename))):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if f.startswith(".") or p.is_symlink() or not p.is_file():
                continue  # symlinks could point outside the served root
            files.append(p)
    if unreadable:
        log.warning("%s: %d sub-folder(s) could not be listed and are left out: %s", root, len(unreadable),
                    ", ".join(unreadable[:10]))
    if not files:
        raise GalleryError(f"{root}: no files in this folder")
    return Gallery(f"folder {root.name} ({len(files)} files)", [GalleryItem(p) for p in files], [root])


def resolve_under(path: PathLike, roots: Sequence[PathLike]) -> Path:
    """``path`` resolved (symlinks followed), if it lies inside one of ``roots``; else GalleryError.

    Relative paths are taken relative to the first root.
    """
    if not roots:
        raise GalleryError("choosing a folder is off: start the demo with --allow-root DIR")
    text = str(path).strip()
    if not text or "\x00" in text:
        raise GalleryError("no folder given")
    resolved_roots = [Path(r).expanduser().resolve() for r in roots]
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = resolved_roots[0] / p
    p = p.resolve()
    for root in resolved_roots:
        if p == root or root in p.parents:
            return p
    raise GalleryError(f"{text}: not inside an allowed folder ({', '.join(str(r) for r in resolved_roots)})")
