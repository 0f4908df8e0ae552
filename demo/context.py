"""What every view of the app shares: the engine registry, the image writer, the allowed roots,
and each visitor's own choice of gallery and model.

Shared (one per process, thread-safe): :class:`DemoContext` -- the :class:`SearchEngine`
(models, indexed galleries and their features, cached per model x gallery), the
:class:`ImageFiles` writer, the allowed roots.

Per visitor (one per browser session or ``gradio_client.Client``): :class:`VisitorState`,
kept in a ``gr.State``. A view never mutates the shared objects to express a choice;
it reads the visitor's state and passes it to the context's methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import torch

from demo.gallery import Gallery, GalleryError, GalleryItem, domain_gallery, resolve_under
from demo.search import UPPERSON, GalleryIndex, QueryError, SearchEngine
from demo.thumbs import ImageFiles


@dataclass(frozen=True)
class VisitorState:
    """One visitor's view: the gallery (a key of ``engine.galleries``) and the PETL checkpoint name.

    Frozen: a change makes a new object (``dataclasses.replace``), which is what an event
    returns to the ``gr.State``; ``state.change`` then fires for listeners in other tabs.
    """

    gallery: str
    model: str


class DemoContext:
    """The shared part of the app, handed to every view builder."""

    def __init__(self, engine: SearchEngine, *, allow_roots: Sequence[Path] = (), default_top_k: int = 20,
                 files: Optional[ImageFiles] = None, study_roots: Sequence[Path] = ()) -> None:
        self.engine = engine
        self.allow_roots = [Path(r).resolve() for r in allow_roots]
        #: the ``--studies`` folders the Studies views may read (besides the shipped ones: demo.views.study_files)
        self.study_roots = [Path(r).resolve() for r in study_roots]
        self.default_top_k = default_top_k
        self.files = files or ImageFiles()
        self._domain_lock = threading.Lock()  # one generation of a domain's gallery at a time

    # ------------------------------------------------------------------ state
    def new_state(self) -> VisitorState:
        """The start-up view: default gallery and checkpoint."""
        return VisitorState(self.engine.default_gallery, self.engine.default_checkpoint)

    def valid_state(self, state: Optional[VisitorState]) -> VisitorState:
        """``state``, or the default one if it is missing or names a gallery no longer indexed."""
        if not isinstance(state, VisitorState) or state.gallery not in self.engine.galleries \
                or state.model not in self.engine.checkpoints:
            return self.new_state()
        return state

    def check_state(self, state: Optional[VisitorState]) -> VisitorState:
        """``state`` if its gallery is still indexed, else QueryError telling the visitor what to do."""
        if isinstance(state, VisitorState) and state.gallery not in self.engine.galleries:
            raise QueryError(f"Your gallery is no longer in memory (the {self.engine.MAX_GALLERIES} most recently "
                             "indexed folders are kept): choose its folder again under *Model and gallery*.")
        return self.valid_state(state)

    # ------------------------------------------------------------------ reading the visitor's view
    def gallery_index(self, state: Optional[VisitorState]) -> GalleryIndex:
        return self.engine.gallery_index(self.valid_state(state).gallery)

    def gallery(self, state: Optional[VisitorState]) -> Gallery:
        """The visitor's gallery (items with path, pid, captions; ``relative_name(item)`` for display)."""
        return self.gallery_index(state).gallery

    def item(self, state: Optional[VisitorState], name: str) -> tuple[int, GalleryItem]:
        """A gallery item by its displayed name (``relative_name``) or ``#index``; QueryError otherwise."""
        return self.engine.item_by_name(name, self.valid_state(state).gallery)

    @contextlib.contextmanager
    def model(self, state: Optional[VisitorState], variant: str = UPPERSON) -> Iterator[torch.nn.Module]:
        """Hold the engine lock with the visitor's checkpoint loaded; yields the model of ``variant``.

        Run every forward pass (and ``record_attention``) inside this block, and nothing slow
        that does not need the model (drawing figures) -- other visitors wait meanwhile.
        """
        with self.engine.using(self.valid_state(state).model, variant) as m:
            yield m

    def features(self, state: Optional[VisitorState], variant: str = UPPERSON) -> torch.Tensor:
        """(N, D) normalised image features of the visitor's gallery (cached per model x gallery)."""
        s = self.valid_state(state)
        return self.engine.features(variant, s.gallery, s.model)

    def cache_key(self, state: Optional[VisitorState]) -> tuple[str, str]:
        """(gallery key, checkpoint name): the key for caches shared by visitors with the same view."""
        s = self.valid_state(state)
        return s.gallery, s.model

    # ------------------------------------------------------------------ changing the visitor's view
    def with_model(self, state: Optional[VisitorState], name: str) -> VisitorState:
        """A new state on checkpoint ``name`` (its weights are loaded once to check them)."""
        name = self.engine.check_checkpoint(name)
        with self.engine.using(name):
            pass
        return dataclasses.replace(self.valid_state(state), model=name)

    def with_folder(self, state: Optional[VisitorState], folder: str) -> VisitorState:
        """A new state on the folder ``folder`` (under an allowed root), indexed now; GalleryError otherwise."""
        from demo.gallery import folder_gallery

        s = self.valid_state(state)
        path = self.resolve(folder)
        gi = self.engine.add_gallery(folder_gallery(path), checkpoint=s.model, relist=lambda: folder_gallery(path))
        self.files.warm([it.path for it in gi.gallery.items])
        return dataclasses.replace(s, gallery=gi.key)

    @staticmethod
    def domain_key(domain: str) -> str:
        """The ``engine.galleries`` key of a ToyPEDES domain's test split."""
        return f"domain:{domain}"

    def with_domain(self, state: Optional[VisitorState], domain: str) -> VisitorState:
        """A new state on ToyPEDES ``domain``'s test split: generated into the cache on its first pick
        (``demo.gallery.domain_gallery``), then indexed once per process; GalleryError otherwise."""
        s = self.valid_state(state)
        key = self.domain_key(domain)
        with self._domain_lock:
            if key not in self.engine.galleries:
                gallery = domain_gallery(domain)
                self.files.allow_sources(gallery.source_roots)
                self.engine.add_gallery(gallery, key=key, checkpoint=s.model)
                self.files.warm([it.path for it in gallery.items])
        return dataclasses.replace(s, gallery=key)

    def resolve(self, folder: str) -> Path:
        """``folder`` resolved inside the allowed roots (relative to the first), else GalleryError."""
        try:
            return resolve_under("" if folder is None else str(folder), self.allow_roots)
        except (RuntimeError, OSError) as exc:  # a symlink loop: RuntimeError up to Python 3.12, OSError after
            raise GalleryError(f"{folder}: cannot be followed, a symbolic link loops ({exc}); "
                               "choose a real folder") from None


class SharedUI(NamedTuple):
    """Components every tab may read or listen to (created by ``demo.app.build_app``)."""

    state: object  # gr.State holding the VisitorState
    selected: object  # gr.Textbox: the gallery name of the image last clicked in the Search results
    header: object  # gr.Markdown: the visitor's gallery and model
    tabs: object  # gr.Tabs: return gr.Tabs(selected="attention") to switch the visitor to a tab


__all__ = ["DemoContext", "GalleryError", "QueryError", "SharedUI", "VisitorState"]
