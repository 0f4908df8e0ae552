"""Gallery sources: the embedded ToyPEDES test split, a dataset split, or a folder of images.

A :class:`Gallery` is a list of image files, with the person id and captions of each when
the source knows them, the folders its names are relative to (``roots``) and the folders its
images must resolve inside (``source_roots``: a dataset's own folder, or the chosen folder).
The app never serves a folder: it shows thumbnails it made (``demo.thumbs``). A dataset whose
images resolve outside the data root's folder and the ``--allow-root`` folders is refused
(:func:`dataset_gallery`); training and evaluation read such paths as ``docs/data.md`` says.
Folder paths chosen in the UI go through :func:`resolve_under`, which refuses anything
outside the allowed roots.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from upperson.data.toypedes.domains import DOMAINS

log = logging.getLogger(__name__)

#: the gallery picker's value for the start-up gallery (its other values: the keys of DOMAINS)
DEFAULT_CHOICE = "default"
#: size preset of the domain galleries generated on first pick (test split only; docs/demo.md has the timings)
DOMAIN_PRESET = "small"
#: the picker's short words for each domain's scene (the domains themselves: upperson/data/toypedes/domains.py)
DOMAIN_SCENES = {"cuhk": "campus, daylight", "icfg": "indoor, winter", "rstp": "street, night"}

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
    roots: list[Path]  # folders the shown names are relative to (never served)
    allowed: list[Path] = field(default_factory=list)  # folders its images must resolve inside ([]: roots)

    @property
    def source_roots(self) -> list[Path]:
        """The folders this gallery's images may be read from to show them."""
        return list(self.allowed or self.roots)

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
        return Gallery(self.name, [it for it in self.items if it.path in keep], self.roots, self.allowed)


def normalise_caption(text: str) -> str:
    """Whitespace-collapsed, lower-case text, for matching a query to a dataset caption."""
    return " ".join(text.split()).lower()


def data_folder(root: PathLike) -> Path:
    """The data root's own folder: ``root`` itself, or the folder of an annotation file (``generic``)."""
    path = Path(root).expanduser().resolve()
    return path if path.is_dir() else path.parent


def outside_error(dataset: str, image: PathLike, allowed: Sequence[Path]) -> GalleryError:
    """The refusal of a dataset whose ``image`` resolves outside ``allowed`` (one message, what to do)."""
    return GalleryError(f"{dataset}: image {image} resolves outside the data root's folder and the allowed roots "
                        f"({', '.join(map(str, allowed))}); the demo shows only images inside them: name the "
                        "images' folder with --allow-root DIR, or move the images under the data root")


def dataset_gallery(name: str, root: PathLike, split: str = "test", *,
                    allow_roots: Sequence[PathLike] = ()) -> Gallery:
    """The images of one split of a dataset in a supported format (docs/data.md) (``cuhk-pedes``, ``toypedes``, ...).

    Every image must resolve inside the data root's folder or one of ``allow_roots``
    (``--allow-root``); the first that does not is a GalleryError naming it.
    """
    from upperson.data import DatasetError, load_dataset

    try:
        ds = load_dataset(name, root, skip_bad_images=True, check_images=False)
        records = ds.split(split)
    except DatasetError as exc:
        raise GalleryError(str(exc)) from exc
    if not records:
        raise GalleryError(f"{ds.name} at {ds.root}: the {split!r} split is empty")
    allowed = [data_folder(root)] + [Path(r).expanduser().resolve() for r in allow_roots]
    items = []
    for r in records:
        path = Path(os.path.realpath(r.path))
        if not any(path == a or a in path.parents for a in allowed):
            raise outside_error(f"{ds.name} at {root}", r.path, allowed)
        items.append(GalleryItem(path, int(r.pid), list(r.captions)))
    # names are relative to the images' common folder (short); what is read is checked against `allowed`
    image_root = Path(os.path.commonpath([str(it.path.parent) for it in items]))
    return Gallery(f"{ds.name} {split}", items, [image_root], allowed)


def index_gallery(folder: PathLike, allow_roots: Sequence[PathLike] = ()) -> Gallery:
    """The images of an index folder made by ``python -m upperson index`` (``--index``), in its order.

    Every image must resolve inside the folder the index was built from (for a list of files,
    the list's folder) or one of ``allow_roots``; the first that does not is a GalleryError.
    """
    from upperson.search.store import IndexFolderError, IndexStore

    try:
        store = IndexStore.open(folder)
    except IndexFolderError as exc:
        raise GalleryError(f"--index: {exc}") from None
    if not store.manifest.entries:
        raise GalleryError(f"--index {folder}: the index holds no images")
    built_from = Path(store.manifest.build.get("gallery", "")).expanduser()
    root = built_from if built_from.is_dir() else built_from.parent
    allowed = [root.resolve()] + [Path(r).expanduser().resolve() for r in allow_roots]
    items = []
    for e in store.manifest.entries:
        path = Path(os.path.realpath(e.path))
        if not any(path == a or a in path.parents for a in allowed):
            raise outside_error(f"index {folder}", Path(e.path), allowed)
        items.append(GalleryItem(path))
    # the header adds the image count
    names_root = Path(os.path.commonpath([str(it.path.parent) for it in items]))
    return Gallery(f"index {Path(folder).name}", items, [names_root], allowed)


def embedded_gallery() -> Gallery:
    """The default gallery: the ToyPEDES test split the embedded model was evaluated on, as its card
    records it (preset, seed and, for a model trained on a domain, that domain: one place decides)."""
    from upperson.embedded import embedded_data_root, embedded_domain

    g = dataset_gallery("toypedes", embedded_data_root(splits=["test"]), "test")
    domain = embedded_domain()
    g.name = f"embedded {domain_label(domain)} test" if domain else "embedded " + g.name
    return g


def domain_label(domain: str) -> str:
    """The picker's label of a domain: ``"ToyPEDES cuhk (campus, daylight)"``."""
    return f"ToyPEDES {domain} ({DOMAIN_SCENES[domain]})"


def domain_data_root(domain: str, preset: Optional[str] = None, seed: Optional[int] = None) -> Path:
    """The data root of ``domain``'s ToyPEDES test split, generated once into the cache (atomic, seeded,
    verified against its manifest when reused), beside the embedded gallery's (``embedded_data_root``)."""
    # imported here, for start-up time (as in upperson.embedded): the generator is needed on a pick only
    from upperson.data.toypedes import generate_toypedes

    preset, seed = preset or DOMAIN_PRESET, card_seed(seed)
    root = domain_root(domain, preset, seed)
    if not (root / "ToyPEDES" / "reid_raw.json").exists():
        log.info("generating ToyPEDES domain %s (%s, seed %d, test only) into %s, once", domain, preset, seed, root)
    try:
        generate_toypedes(root, preset=preset, seed=seed, splits=["test"], repair=True, domain=domain)
    except Exception as exc:  # disk full, unwritable cache, a bug: one message; the traceback goes to the log
        log.error("generating %s into %s failed", domain_label(domain), root, exc_info=True)
        raise GalleryError(f"{domain_label(domain)}: the gallery could not be generated into {root} ({exc}); "
                           "free disk space or set UPPERSON_CACHE to a writable folder, then pick it again") from None
    return root


def domain_ready(domain: str, preset: Optional[str] = None, seed: Optional[int] = None) -> bool:
    """Whether ``domain``'s gallery is already in the cache (picking it generates nothing)."""
    return (domain_root(domain, preset, seed) / "ToyPEDES" / "reid_raw.json").exists()


def domain_root(domain: str, preset: Optional[str] = None, seed: Optional[int] = None) -> Path:
    """Where ``domain``'s test split is cached: beside the embedded gallery's, with the model card's seed."""
    from upperson.embedded import cache_dir  # start-up time, as in upperson.embedded

    if domain not in DOMAINS:
        raise GalleryError(f"unknown ToyPEDES domain {domain!r}; known: {', '.join(DOMAINS)}")
    return cache_dir() / "toypedes" / f"{domain}-{preset or DOMAIN_PRESET}-seed{card_seed(seed)}-test"


def card_seed(seed: Optional[int] = None) -> int:
    """``seed``, or the model card's ToyPEDES seed (what ``embedded_data_root`` uses)."""
    from upperson.assets import card_toypedes  # start-up time, as in upperson.embedded

    return card_toypedes()["seed"] if seed is None else int(seed)


def domain_gallery(domain: str, preset: Optional[str] = None) -> Gallery:
    """The test split of a ToyPEDES domain (a key of :data:`DOMAINS`), generated on first use."""
    g = dataset_gallery("toypedes", domain_data_root(domain, preset), "test")
    g.name = f"{domain_label(domain)} test"
    return g


def folder_gallery(folder: PathLike) -> Gallery:
    """Every regular, non-hidden file under ``folder`` (recursively, sorted); no identities.

    Non-image files are listed too: the index skips them, counts them and names them in
    the log, so a user sees why a file is missing from the results.
    """
    try:
        root = Path(folder).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError before Python 3.13
        raise GalleryError(f"{folder}: cannot be followed, a symbolic link loops or a folder is unreadable ({exc}); "
                           "give a real folder") from None
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
    return Gallery(f"folder {root.name} ({len(files)} files)", [GalleryItem(p) for p in files], [root], [root])


def resolve_under(path: PathLike, roots: Sequence[PathLike]) -> Path:
    """``path`` resolved (symlinks followed), if it lies inside one of ``roots``; else GalleryError.

    Relative paths are taken relative to the first root.
    """
    if not roots:
        raise GalleryError("choosing a folder is off: start the demo with --allow-root DIR")
    text = str(path).strip()
    if not text or "\x00" in text:
        raise GalleryError("no folder given")
    resolved_roots = [Path(os.path.realpath(Path(r).expanduser())) for r in roots]
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = resolved_roots[0] / p
    p = Path(os.path.realpath(p))  # never raises (a symlink loop stays unresolved, then is not a folder)
    for root in resolved_roots:
        if p == root or root in p.parents:
            return p
    raise GalleryError(f"{text}: not inside an allowed folder ({', '.join(str(r) for r in resolved_roots)})")
