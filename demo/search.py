"""The search engine behind the demo: models, the gallery's features, ranking and metrics.

Every forward pass on the shared model runs under one re-entrant lock, so concurrent requests
(the Gradio queue runs several at once) never interleave inside a forward pass or a PETL swap.
Indexing a gallery does not hold it: files are hashed and new ones encoded by a merged copy
of the model (made under the lock, a few tensors), and the lock is taken again only to swap
the new gallery in. Ranking itself is a matrix-vector product and a top-k.

A gallery is an immutable snapshot (:class:`GalleryIndex`): its items, each file's digest
and stamp as indexed, and features computed for exactly those files. A search ranks one
snapshot, and its hits carry their own file path, so a result's name, score and picture
always come from the same snapshot. A hit whose file changed or vanished since indexing
makes the search index the gallery again (and say so); it never mixes two versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image
from torch.nn import functional as F

from demo.gallery import Gallery, GalleryError, GalleryItem, normalise_caption
from upperson.sources import zero_shot_of  # (above the other upperson imports: a merge-friendly spot)
from upperson.evaluation import inference_model
from upperson.index import (ImageIndex, IndexLimits, IndexResult, SkipFile, Stamp, file_stamp, load_checked_rgb,
                            model_key)
from upperson.search.build import BuildLimits
from upperson.search.query import encode_query
from upperson.vocab import KNOWN_THRESHOLD, Vocabulary, VocabularyError, checkpoint_vocabulary

if TYPE_CHECKING:  # (annotations only: analysis.explain imports matplotlib)
    from analysis.explain import Explanation

log = logging.getLogger(__name__)

UPPERSON = "UP-Person"
ZERO_SHOT = "zero-shot CLIP"
VARIANTS = (UPPERSON, ZERO_SHOT)
MAX_QUERY_CHARS = 2000  # longer input is cut before tokenising (the model reads ~75 tokens anyway)
EXPLAIN_WORD_MAPS = 4  # colour words that get their own map in "Why it matched" (one pass each, under the lock)


#: the feature cache's folder under the demo's cache dir
FEATURE_CACHE = "demo-index"


class QueryError(ValueError):
    """A query that cannot be searched; the message is meant for the user."""


@dataclass
class Hit:
    """One ranked gallery image."""

    rank: int  # 1-based
    item: int  # index in the gallery
    file: str  # path relative to the gallery root
    score: float  # cosine similarity
    pid: Optional[int]
    relevant: Optional[bool]  # same identity as the query's (None when the query's is unknown)
    path: Optional[Path] = None  # the file itself, from the same snapshot as the name and score


@dataclass
class Ranking:
    """One model's answer to a query."""

    variant: str
    hits: list[Hit]
    metrics: Optional[dict[str, float]] = None  # R1, AP (percent), first_match (rank) when the id is known


@dataclass
class SearchResult:
    """The answer to a query, from one or both models."""

    query: str  # the text that was encoded (after cleaning and truncation)
    notices: list[str] = field(default_factory=list)
    target_pid: Optional[int] = None
    target_source: str = ""  # "caption" (the query is a gallery caption) or "user"
    rankings: list[Ranking] = field(default_factory=list)
    gallery: Optional["GalleryIndex"] = None  # the snapshot every ranking was computed on


@dataclass(frozen=True)
class ImageQuery:
    """An image query: a gallery image by the name the results show, or an image file (an upload)."""

    name: Optional[str] = None
    path: Optional[Path] = None


@dataclass
class QueryExplanation:
    """One gallery image explained against a text query (:meth:`SearchEngine.explain_query`)."""

    image: Image.Image  # the gallery image as indexed
    item: GalleryItem
    query: str  # the text explained (cleaned and truncated as the search does)
    explanation: "Explanation"  # analysis.explain.Explanation: the numbers
    notices: list[str]
    seconds: float  # the model's time (forward and backward passes, under the lock)


@dataclass
class PreparedQuery:
    text: str
    tokens: torch.Tensor  # (1, context)
    notices: list[str]


@dataclass(frozen=True, eq=False)
class GalleryIndex:
    """One indexed gallery, as a snapshot: its items, the files skipped, lookups, features.

    Never changed once made (a changed folder gives a new snapshot): ``digests`` and
    ``stamps`` are each item's content hash and (device, inode, size, mtime) when it was
    indexed. ``features`` maps (checkpoint name, variant) to (N, D) normalised features of
    exactly these files (filled on first use; the zero-shot variant's checkpoint is None).
    ``relist`` lists the source again (a folder is walked anew) when the files changed.
    """

    key: str
    gallery: Gallery
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    digests: tuple[str, ...] = ()
    stamps: tuple[Stamp, ...] = ()
    relist: Optional[Callable[[], Gallery]] = None
    features: dict[tuple[Optional[str], str], torch.Tensor] = field(default_factory=dict)
    caption_pids: dict[str, set[int]] = field(init=False)
    gallery_pids: torch.Tensor = field(init=False)
    by_name: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        g = self.gallery
        object.__setattr__(self, "caption_pids", g.caption_pids())
        object.__setattr__(self, "gallery_pids", torch.tensor([-1 if it.pid is None else it.pid for it in g.items],
                                                              dtype=torch.long))
        object.__setattr__(self, "by_name", {g.relative_name(it): i for i, it in enumerate(g.items)})

    @property
    def paths(self) -> list[Path]:
        return [it.path for it in self.gallery.items]

    def changed(self, rows: Sequence[int]) -> list[Path]:
        """The files among ``rows`` whose stamp differs from the one indexed (or that are gone)."""
        out = []
        for i in dict.fromkeys(rows):
            path = self.gallery.items[i].path
            if not self.stamps or file_stamp(path) != self.stamps[i]:
                out.append(path)
        return out


class SearchEngine:
    """Models, the indexed galleries with their cached features, and the search itself.

    ``checkpoints`` maps display names to PETL checkpoint folders of the loaded backbone;
    the default name (None path) is the model's weights at start-up, kept in memory.

    Nothing here is per visitor: a request names its gallery (a key of :attr:`galleries`)
    and its checkpoint; both default to the start-up ones. One model object serves every
    checkpoint: before a forward pass the requested PETL weights are copied in (a few
    tensors) under the lock, so visitors on different checkpoints never see each other's.
    """

    MAX_GALLERIES = 16  # indexed galleries kept besides the default (least recently added dropped)

    def __init__(self, model: torch.nn.Module, gallery: Gallery, *, cache_dir: Union[str, Path],
                 checkpoints: Optional[dict[str, Optional[Path]]] = None, default_name: str = "embedded",
                 progress: bool = True, batch_size: int = 64, query_threads: Optional[int] = None,
                 index_threads: Optional[int] = None, limits: Optional[IndexLimits] = None,
                 relist: Optional[Callable[[], Gallery]] = None,
                 vocabularies: Optional[dict[str, Optional[Vocabulary]]] = None) -> None:
        from upperson.data import build_tokenizer
        from upperson.model.checkpoint import trainable_state_dict

        self.lock = threading.RLock()
        # torch's thread count is process-wide; every model call holds the lock, so switching
        # it per task is safe. One query is a short sequence: one thread is fastest, and on a
        # busy machine extra threads make it much slower; indexing a gallery wants more.
        self.query_threads = query_threads
        self.index_threads = index_threads
        self.model = model.eval()
        self.cache_dir = Path(cache_dir)
        self.progress = progress
        self.batch_size = batch_size
        # a gallery file is never followed through a link when read (listings skip links already)
        self.limits = dataclasses.replace(limits or IndexLimits(), follow_symlinks=False)
        self.tokenizer = build_tokenizer(model.config.name)
        # cloned: for float32 CPU parameters trainable_state_dict returns views of the live weights
        self._initial_petl = {n: v.clone() for n, v in trainable_state_dict(model).items()}
        self.checkpoints: dict[str, Optional[Path]] = {default_name: None, **(checkpoints or {})}
        self.default_checkpoint = default_name
        # each checkpoint's training vocabulary (None: it stores none, and no notice is given)
        self.vocabularies: dict[str, Optional[Vocabulary]] = dict(vocabularies or {})
        for name, path in self.checkpoints.items():
            if path is not None and name not in self.vocabularies:
                self.vocabularies[name] = stored_vocabulary(path)
        self._loaded = default_name  # the PETL weights in self.model right now
        self._petl_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._zero_shot: Optional[torch.nn.Module] = None
        self._indexes: dict[str, ImageIndex] = {}
        self.galleries: dict[str, GalleryIndex] = {}
        self.default_gallery = "default"
        self._check_checkpoints()
        self.add_gallery(gallery, key=self.default_gallery, relist=relist)

    # ------------------------------------------------------------------ defaults (start-up view)
    @property
    def gallery(self) -> Gallery:
        """The default gallery (what a new visitor sees)."""
        return self.galleries[self.default_gallery].gallery

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        return self.galleries[self.default_gallery].skipped

    @property
    def _by_name(self) -> dict[str, int]:
        return self.galleries[self.default_gallery].by_name

    @property
    def checkpoint_name(self) -> str:
        return self.default_checkpoint

    # ------------------------------------------------------------------ models
    def model_of(self, variant: str) -> torch.nn.Module:
        """The model of ``variant`` (the zero-shot one is built on first use); see :meth:`using`."""
        if variant == UPPERSON:
            return self.model
        if variant == ZERO_SHOT:
            return self.zero_shot
        raise QueryError(f"unknown model {variant!r}; choose from {', '.join(VARIANTS)}")

    @property
    def zero_shot(self) -> torch.nn.Module:
        with self.lock:
            if self._zero_shot is None:
                self._zero_shot = zero_shot_of(self.model)  # shares its backbone tensors
            return self._zero_shot

    def check_checkpoint(self, name: Optional[str]) -> str:
        """``name`` if it is a known checkpoint (None: the default), else QueryError."""
        if name is None:
            return self.default_checkpoint
        if not isinstance(name, str) or name not in self.checkpoints:
            raise QueryError(f"unknown checkpoint {name!r}; choose from {', '.join(self.checkpoints)}")
        return name

    def _check_checkpoints(self) -> None:
        """Load every other checkpoint's PETL weights once (all checks included), then the default's again:
        a checkpoint that cannot be used is refused at start (ValueError naming it), not in the dropdown."""
        with self.lock:
            for name, path in self.checkpoints.items():
                if path is None:
                    continue
                try:
                    self._activate(name)
                except Exception as exc:  # FileNotFoundError, CheckpointMismatchError, CheckpointCorruptError, ...
                    self._petl_cache.pop(name, None)
                    self._activate(self.default_checkpoint)
                    raise ValueError(f"--checkpoint {path}: cannot be switched to ({exc}); give checkpoints of the "
                                     f"same backbone as the first, or leave it out") from None
            self._activate(self.default_checkpoint)

    def _activate(self, name: str) -> None:
        """Copy checkpoint ``name``'s PETL weights into the model (caller holds the lock)."""
        from upperson.model.checkpoint import load_petl, trainable_state_dict

        if name == self._loaded:
            return
        if name not in self._petl_cache:
            path = self.checkpoints[name]
            if path is None:
                self._petl_cache[name] = self._initial_petl
            else:
                load_petl(self.model, path)  # checks everything before copying: a mismatch changes nothing
                self._petl_cache[name] = {n: v.clone() for n, v in trainable_state_dict(self.model).items()}
                self._loaded = name
                return
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for n, v in self._petl_cache[name].items():
                params[n].copy_(v.to(params[n].dtype))
        self._loaded = name

    @contextlib.contextmanager
    def using(self, checkpoint: Optional[str] = None, variant: str = UPPERSON) -> Iterator[torch.nn.Module]:
        """Hold the lock with ``checkpoint``'s weights loaded; yields the model of ``variant``.

        Every forward pass of the app goes through this (or a method that uses it), so a
        concurrent request on another checkpoint waits instead of swapping weights mid-pass.
        """
        name = self.check_checkpoint(checkpoint)
        with self.lock:
            if variant == UPPERSON:
                self._activate(name)
            yield self.model_of(variant)

    @contextlib.contextmanager
    def _threads(self, n: Optional[int]) -> Iterator[None]:
        before = torch.get_num_threads()
        if n:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if n:
                torch.set_num_threads(before)

    def _index(self, model: torch.nn.Module) -> ImageIndex:
        """The feature cache of ``model`` as it is now (caller holds the lock: the key reads its weights)."""
        key = model_key(model)
        if key not in self._indexes:
            self._indexes[key] = ImageIndex(model, self.cache_dir / FEATURE_CACHE, batch_size=self.batch_size,
                                            progress=self.progress, key=key, limits=self.limits)
        return self._indexes[key]

    def _embed(self, checkpoint: str, variant: str, paths: list[Path]) -> IndexResult:
        """Features of ``paths`` for ``variant`` on ``checkpoint``, hashed and encoded outside the lock.

        The lock is held only to find the cache (its key reads the weights) and, when there
        are new files, to make the merged copy that encodes them: other visitors' searches
        never wait for a slow file or a big folder.
        """
        with self.using(checkpoint, variant) as model:
            index = self._index(model)

        def encoder() -> torch.nn.Module:
            with self.using(checkpoint, variant) as m:
                return inference_model(m)

        with self._threads(self.index_threads):
            return index.embed(paths, encoder=encoder)

    # ------------------------------------------------------------------ galleries
    def gallery_index(self, key: Optional[str] = None) -> GalleryIndex:
        """The current snapshot of gallery ``key`` (None: the default), else QueryError."""
        gi = self.galleries.get(self.default_gallery if key is None else key)
        if gi is None:
            raise QueryError(f"gallery {key!r} is not indexed (any more); choose a folder again.")
        return gi

    def _snapshot(self, key: str, gallery: Gallery, checkpoint: str,
                  relist: Optional[Callable[[], Gallery]]) -> GalleryIndex:
        """Index ``gallery`` (no lock held while hashing and encoding) into a new snapshot."""
        res = self._embed(checkpoint, UPPERSON, [it.path for it in gallery.items])
        if not res.paths:
            raise GalleryError(f"{gallery.name}: none of its {len(gallery)} files is a readable image")
        gi = GalleryIndex(key, gallery.restricted_to(res.paths), list(res.skipped), tuple(res.digests),
                          tuple(res.stamps), relist or (lambda: gallery))
        gi.features[(checkpoint, UPPERSON)] = res.features
        return gi

    def _install(self, gi: GalleryIndex, replacing: Optional[GalleryIndex] = None) -> GalleryIndex:
        """Make ``gi`` current for its key; with ``replacing``, only if that is still current (else the current)."""
        with self.lock:
            current = self.galleries.get(gi.key)
            if replacing is not None and current is not replacing:
                return current if current is not None else gi  # someone re-indexed it meanwhile (or it was dropped)
            self.galleries.pop(gi.key, None)
            self.galleries[gi.key] = gi
            extra = [k for k in self.galleries if k != self.default_gallery and k != gi.key]
            for k in extra[: max(0, len(extra) - self.MAX_GALLERIES + 1)]:
                del self.galleries[k]
            return gi

    def add_gallery(self, gallery: Gallery, key: Optional[str] = None, checkpoint: Optional[str] = None,
                    relist: Optional[Callable[[], Gallery]] = None) -> GalleryIndex:
        """Index ``gallery`` (only new content is encoded) under ``key`` (default: its roots) and return it.

        Re-adding a key lists the files again (a changed folder is picked up). Other
        visitors are unaffected: the gallery a request uses is the one its caller names.
        ``relist`` lists the source again when a search finds its files changed (default:
        the same items, of which the vanished ones are dropped).
        """
        key = key or "folder:" + "|".join(str(r) for r in gallery.roots)
        name = self.check_checkpoint(checkpoint)
        return self._install(self._snapshot(key, gallery, name, relist))

    def reindex(self, gi: GalleryIndex, checkpoint: Optional[str] = None) -> GalleryIndex:
        """A new snapshot of ``gi``'s source (listed again), made current unless another one already was."""
        name = self.check_checkpoint(checkpoint)
        try:
            gallery = gi.relist() if gi.relist is not None else gi.gallery
            fresh = self._snapshot(gi.key, gallery, name, gi.relist)
        except GalleryError as exc:
            raise QueryError(f"The gallery changed since it was indexed and cannot be indexed again: {exc}") from None
        log.info("gallery %s changed since it was indexed: %d images now", gi.key, len(fresh.gallery))
        return self._install(fresh, replacing=gi)

    def set_gallery(self, gallery: Gallery) -> None:
        """Replace the default gallery (start-up and tests; the app adds galleries per visitor)."""
        self.add_gallery(gallery, key=self.default_gallery)

    def snapshot_features(self, gi: GalleryIndex, variant: str,
                          checkpoint: Optional[str] = None) -> tuple[GalleryIndex, torch.Tensor]:
        """(snapshot, its (N, D) features for ``variant``): ``gi`` itself, or a new one if its files changed."""
        if variant not in VARIANTS:
            raise QueryError(f"unknown model {variant!r}; choose from {', '.join(VARIANTS)}")
        name = self.check_checkpoint(checkpoint)
        slot = (name if variant == UPPERSON else None, variant)
        for _ in range(3):
            feats = gi.features.get(slot)
            if feats is not None:
                return gi, feats
            res = self._embed(name, variant, gi.paths)
            if res.paths == gi.paths and tuple(res.digests) == gi.digests:
                with self.lock:
                    return gi, gi.features.setdefault(slot, res.features)
            gi = self.reindex(gi, name)  # the files changed since the snapshot: never mix the two
        raise QueryError("The gallery keeps changing while it is indexed; try again in a moment.")

    def features(self, variant: str, gallery: Optional[str] = None, checkpoint: Optional[str] = None) -> torch.Tensor:
        """(N, D) normalised features of gallery ``gallery``'s current snapshot for ``variant`` (cached)."""
        return self.snapshot_features(self.gallery_index(gallery), variant, checkpoint)[1]

    # ------------------------------------------------------------------ queries
    def prepare(self, text: Optional[str]) -> PreparedQuery:
        """Clean, check and tokenise a query; over-long text is truncated with a notice."""
        notices: list[str] = []
        raw = "" if text is None else str(text)
        text = "".join(ch for ch in raw if ch.isprintable() or ch.isspace())
        removed = len(raw) - len(text)
        text = " ".join(text.split())
        if not text:
            typed = (f"The description has no printable character ({removed} control or invisible character(s) "
                     "removed). ") if removed else ""
            raise QueryError(f"{typed}Type a description of the person, e.g. \"a woman in a red coat with a black "
                             "backpack\".")
        if len(text) > MAX_QUERY_CHARS:
            text = text[:MAX_QUERY_CHARS]
            notices.append(f"The description was cut to its first {MAX_QUERY_CHARS} characters.")
        tokens = self.tokenizer(text)
        limit = self.tokenizer.context_length - 2
        kept, count = self.tokenizer.truncate(text)
        if count is not None and count > limit:
            notices.append(f"The description is {count} tokens long; the model reads the first {limit} "
                           f"(up to \"...{kept[-40:]}\").")
            text = kept
        return PreparedQuery(text, tokens, notices)

    @torch.no_grad()
    def encode_query(self, tokens: torch.Tensor, variant: str = UPPERSON, checkpoint: Optional[str] = None) -> torch.Tensor:
        """(D,) normalised text feature."""
        # NOTE: self.model's PETL weights change with the visitor's checkpoint (see using()); a cached
        # merged copy (model.merged()) must be keyed by the checkpoint name, e.g. {name: merged}.
        with self.using(checkpoint, variant) as model, self._threads(self.query_threads):
            return F.normalize(model.encode_text(tokens).float(), dim=-1)[0]

    @staticmethod
    def rank(features: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices) of the top ``k`` gallery rows, best first."""
        sim = features @ query
        k = max(1, min(int(k), sim.shape[0]))
        top = torch.topk(sim, k)
        return top.values, top.indices

    def target_pid(self, text: str, user_pid: Optional[Union[int, str, float]],
                   gallery: Union[None, str, GalleryIndex] = None) -> tuple[Optional[int], str, list[str]]:
        """The identity a query is about: the user's, else the one whose caption it is."""
        gi = gallery if isinstance(gallery, GalleryIndex) else self.gallery_index(gallery)
        notices = []
        if user_pid is not None and str(user_pid).strip() != "":
            pid = parse_pid(user_pid)
            if pid is None:
                return None, "", [f"Person id {str(user_pid)[:40]!r} is not a person id (a whole number from 0 to "
                                 f"{PID_MAX}, e.g. 12); ignored."]
            if not bool((gi.gallery_pids == pid).any()):
                return None, "", [f"Person id {pid} has no image in this gallery; ignored."]
            return pid, "user", notices
        pids = gi.caption_pids.get(normalise_caption(text), set())
        if len(pids) == 1:
            return next(iter(pids)), "caption", notices
        if len(pids) > 1:
            notices.append(f"This caption describes {len(pids)} identities; give a person id to score it.")
        return None, "", notices

    def _rank_snapshot(self, gi: GalleryIndex, q: PreparedQuery, text: str, top_k: int,
                       pid: Optional[Union[int, str, float]], variants: tuple[str, ...],
                       checkpoint: str, image: Optional[ImageQuery] = None) -> SearchResult:
        """Every ranking of one query (text, or ``image``) on snapshot ``gi``; features of another
        snapshot (the files changed) make the result name that one in ``result.gallery``, and the
        caller ranks again on it."""
        exclude: Optional[int] = None
        if image is not None and image.name is not None:  # a gallery image: it is left out of its own ranking
            exclude, item = self.item_by_name(image.name, gi)
            if pid is None or str(pid).strip() == "":
                target, source, more = (item.pid, "image", []) if item.pid is not None else (None, "", [])
            else:
                target, source, more = self.target_pid("", pid, gi)
        else:
            target, source, more = self.target_pid(text, pid, gi)
        result = SearchResult(q.text, q.notices + more, target, source, gallery=gi)
        items = gi.gallery.items
        for variant in variants:
            snap, feats = self.snapshot_features(gi, variant, checkpoint)
            if snap is not gi:
                result.gallery = snap
                return result
            if exclude is not None:
                qv = feats[exclude]
            elif image is not None:
                qv = self.encode_image_file(image.path, variant, checkpoint)
            else:
                qv = self.encode_query(q.tokens, variant, checkpoint)
            sim = feats @ qv
            keep = torch.ones(sim.shape[0], dtype=torch.bool)
            if exclude is not None:
                keep[exclude] = False
            rows = keep.nonzero()[:, 0]
            scores, idx = self.rank(feats[rows], qv, top_k)
            idx = rows[idx]
            hits = [
                Hit(r + 1, int(i), gi.gallery.relative_name(items[int(i)]), float(s), items[int(i)].pid,
                    None if target is None else items[int(i)].pid == target, items[int(i)].path)
                for r, (s, i) in enumerate(zip(scores.tolist(), idx.tolist()))
            ]
            metrics = self._metrics(gi, sim, target, keep) if target is not None else None
            result.rankings.append(Ranking(variant, hits, metrics))
        return result

    def search(self, text: Optional[str], top_k: int = 20, *, pid: Optional[Union[int, str, float]] = None,
               variants: tuple[str, ...] = (UPPERSON,), gallery: Optional[str] = None,
               checkpoint: Optional[str] = None) -> SearchResult:
        """Rank gallery ``gallery`` for ``text`` with each of ``variants`` (UP-Person with ``checkpoint``).

        All rankings come from one snapshot. If the files of a hit changed or vanished since
        it was indexed, the gallery is indexed again and the query ranked on the new
        snapshot, with a notice saying so.
        """
        q = self.prepare(text)
        q.notices.extend(self.vocabulary_notices(q.text, self.check_checkpoint(checkpoint)))
        return self._search(q, str(text), top_k, pid, variants, gallery, checkpoint, None)

    def vocabulary_notices(self, text: str, checkpoint: str) -> list[str]:
        """A notice when under KNOWN_THRESHOLD of the words of ``text`` occur in ``checkpoint``'s training
        captions (none when the checkpoint stores no vocabulary)."""
        vocab = self.vocabularies.get(checkpoint)
        if vocab is None:
            return []
        known, total = vocab.coverage(text)
        if total == 0:
            return ["The description has no words (only digits or symbols): the model was trained on English "
                    "captions, so these results say little."]
        if known / total >= KNOWN_THRESHOLD:
            return []
        return [f"Only {known} of the description's {total} words ({known / total:.0%}) occur in this model's "
                f"{vocab.captions:,} training captions (a notice below {KNOWN_THRESHOLD:.0%}): the text may be in "
                "another language or outside the model's vocabulary, so these results may mean little."]

    def search_image(self, image: ImageQuery, top_k: int = 20, *, pid: Optional[Union[int, str, float]] = None,
                     variants: tuple[str, ...] = (UPPERSON,), gallery: Optional[str] = None,
                     checkpoint: Optional[str] = None) -> SearchResult:
        """Rank gallery ``gallery`` for an image: one of its own (by the name the results show; it is left
        out of the ranking, and its identity, when known, is the one scored) or an image file (an upload)."""
        if image.name is None and image.path is None:
            raise QueryError("Upload an image, or click a result and choose \"Find this person\".")
        label = f"the image {image.name}" if image.name is not None else "the uploaded image"
        notices = [f"{image.name} itself is left out of the ranking."] if image.name is not None else []
        return self._search(PreparedQuery(label, torch.empty(0), notices), "", top_k, pid, variants, gallery,
                            checkpoint, image)

    def _search(self, q: PreparedQuery, text: str, top_k: int, pid: Optional[Union[int, str, float]],
                variants: tuple[str, ...], gallery: Optional[str], checkpoint: Optional[str],
                image: Optional[ImageQuery]) -> SearchResult:
        """One query on one snapshot (indexed again while the files of its hits change)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise QueryError(f"Top k must be a whole number of at least 1; got {str(top_k)[:40]!r}.")
        name = self.check_checkpoint(checkpoint)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise QueryError(f"unknown model {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
        first = gi = self.gallery_index(gallery)
        for _ in range(4):
            result = self._rank_snapshot(gi, q, text, top_k, pid, variants, name, image)
            if result.gallery is not gi:
                gi = result.gallery
                continue
            changed = gi.changed([h.item for r in result.rankings for h in r.hits])
            if not changed:
                if gi is not first:
                    result.notices.append(f"The gallery changed since it was indexed; it was indexed again "
                                          f"({len(gi.gallery)} images) and searched on that.")
                return result
            gi = self.reindex(gi, name)
        raise QueryError("The gallery keeps changing while it is searched; try again in a moment.")

    @torch.no_grad()
    def encode_image_file(self, path: Path, variant: str = UPPERSON, checkpoint: Optional[str] = None) -> torch.Tensor:
        """(D,) normalised feature of an image file (an upload), read within this engine's limits."""
        try:
            size = Path(path).stat().st_size
        except OSError as exc:
            raise QueryError(f"The image cannot be read ({type(exc).__name__}); upload it again.") from None
        if size > self.limits.max_file_bytes:
            raise QueryError(f"The image is {size / 2**20:.1f} MB, over the limit of "
                             f"{self.limits.max_file_bytes / 2**20:.0f} MB (--max-image-mb).")
        limits = BuildLimits(max_bytes=self.limits.max_file_bytes, max_pixels=self.limits.max_pixels)
        with self.using(checkpoint, variant) as model, self._threads(self.query_threads):
            try:
                feature = encode_query(model, image=Path(path), limits=limits)
            except (FileNotFoundError, ValueError) as exc:
                raise QueryError(f"The upload is not a readable image ({str(exc).split(': ', 1)[-1][:200]}).") from None
        return torch.from_numpy(feature)[0].float()

    def query_metrics(self, similarity: torch.Tensor, pid: int, gallery: Optional[str] = None) -> dict[str, float]:
        """R@1/5/10 and AP (percent) of one query over the whole gallery, and the rank of its first match."""
        return self._metrics(self.gallery_index(gallery), similarity, pid)

    @staticmethod
    def _metrics(gi: GalleryIndex, similarity: torch.Tensor, pid: int,
                 keep: Optional[torch.Tensor] = None) -> dict[str, float]:
        """The metrics of one query over the gallery rows in ``keep`` (default: all)."""
        from upperson.metrics import retrieval_metrics, sorted_matches

        gp = gi.gallery_pids
        if keep is not None:
            gp, similarity = gp[keep], similarity[keep]
        sim = similarity.unsqueeze(0)
        m = retrieval_metrics(sim, torch.tensor([pid]), gp, ranks=(1, 5, 10))
        first = int(sorted_matches(sim, torch.tensor([pid]), gp)[0].nonzero()[0, 0]) + 1
        return {"R1": m["R1"], "R5": m["R5"], "R10": m["R10"], "AP": m["mAP"], "first_match": first,
                "relevant": int((gp == pid).sum()), "gallery": int(gp.shape[0])}

    # ------------------------------------------------------------------ explanations
    def item_by_name(self, name: str, gallery: Union[None, str, GalleryIndex] = None) -> tuple[int, GalleryItem]:
        """A gallery item by the name the results show; anything else is refused."""
        gi = gallery if isinstance(gallery, GalleryIndex) else self.gallery_index(gallery)
        key = ("" if name is None else str(name)).strip()
        shown = key if len(key) <= 120 else key[:117] + "..."
        if key.startswith("#") and key[1:].isdigit() and len(key) < 12:
            i = int(key[1:])
        elif key in gi.by_name:
            i = gi.by_name[key]
        else:
            raise QueryError(f"{shown!r} is not an image of the current gallery.")
        if not 0 <= i < len(gi.gallery):
            raise QueryError(f"{shown!r} is not an image of the current gallery.")
        return i, gi.gallery.items[i]

    def checked_image(self, name: str, gallery: Optional[str] = None) -> tuple[Image.Image, GalleryItem]:
        """(image, item): one gallery image by the name the results show, decoded as it was indexed.

        Its bytes must still hash to the snapshot's digest and fit the limits (a file swapped
        for a bomb is refused, not decoded); QueryError otherwise.
        """
        gi = self.gallery_index(gallery)
        i, item = self.item_by_name(name, gi)
        try:
            return load_checked_rgb(item.path, gi.digests[i], self.limits), item
        except SkipFile as exc:
            raise QueryError(f"{gi.gallery.relative_name(item)} cannot be shown ({exc}); search again.") from None

    @torch.no_grad()
    def explain(self, name: str, variant: str = UPPERSON, gallery: Optional[str] = None,
                checkpoint: Optional[str] = None):
        """(image, heatmap or None, item): the prefix-attention map of one gallery image.

        The image decoded is the one indexed: its bytes must still hash to the snapshot's
        digest and fit the limits (a file swapped for a bomb is refused, not decoded).
        """
        from demo.heatmap import prefix_attention_map
        from upperson.data import build_transforms
        image, item = self.checked_image(name, gallery)
        with self.using(checkpoint, variant) as model:
            x = build_transforms(model.image_size, train=False)(image)
            with self._threads(self.query_threads):
                heat = prefix_attention_map(model, x)
        return image, heat, item


    def explain_query(self, name: str, text: Optional[str], gallery: Optional[str] = None,
                      checkpoint: Optional[str] = None, max_words: int = EXPLAIN_WORD_MAPS) -> QueryExplanation:
        """Which words of ``text`` matched which regions of one gallery image, for UP-Person on ``checkpoint``.

        :func:`analysis.explain.explain` (gradient x input of the similarity through both towers,
        the computation of ``python -m analysis explain``) on the query as the search cleans and
        truncates it; the words mapped are the CLI's default (the colour words), at most
        ``max_words`` of them (each costs a forward and backward pass under the lock; the rest
        are named in a notice). QueryError for a name outside the gallery or an empty query.
        """
        # (analysis.explain imports matplotlib: only once a query is explained, not at start-up)
        from analysis.attention import display_image
        from analysis.explain import caption_words, colour_word_indices, explain
        from upperson.data import build_transforms

        image, item = self.checked_image(name, gallery)
        q = self.prepare(text)
        words, _ = caption_words(q.text, self.tokenizer)
        chosen = colour_word_indices(words)
        notices = list(q.notices)
        if len(chosen) > max_words:
            left = [words[i] for i in chosen[max_words:]]
            log.warning("explain: %d colour words in the query; mapping the first %d (%d left out)", len(chosen),
                        max_words, len(left))
            notices.append(f"The query has {len(chosen)} colour words; the first {max_words} get a map (each "
                           f"costs one more pass), not: {', '.join(left)}.")
            chosen = chosen[:max_words]
        started = time.perf_counter()
        with self.using(checkpoint, UPPERSON) as model, self._threads(self.query_threads):
            x = build_transforms(model.image_size, train=False)(image)
            ex = explain(model, self.tokenizer, x, q.text, word_indices=chosen, display=display_image(x))
        return QueryExplanation(image, item, q.text, ex, notices, time.perf_counter() - started)


PID_MAX = 2**63 - 1


def stored_vocabulary(folder: Path) -> Optional[Vocabulary]:
    """The training vocabulary stored with the checkpoint in ``folder`` (None, with a warning, when unusable)."""
    try:
        vocab = checkpoint_vocabulary(folder)
    except VocabularyError as exc:
        log.warning("%s; the out-of-vocabulary notice is off for this checkpoint", exc)
        return None
    if vocab is None:
        log.info("%s stores no training vocabulary: no out-of-vocabulary notice for it", folder)
    return vocab


def parse_pid(value: object) -> Optional[int]:
    """A person id typed by a visitor as an int (``"12"``, ``12``, ``12.0``), or None if it is not one.

    Only whole numbers from 0 to 2**63 - 1 (what the gallery's int64 ids can hold) are ids;
    ``nan``, ``inf``, ``1.5``, huge numbers and text are not.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        pid = value
    elif isinstance(value, float):
        if not value.is_integer():
            return None
        pid = int(value)
    else:
        text = str(value).strip()
        if not text or len(text) > 25:
            return None
        try:
            pid = int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                return None
            if not f.is_integer():
                return None
            pid = int(f)
    return pid if 0 <= pid <= PID_MAX else None
