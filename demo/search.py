"""The search engine behind the demo: models, the gallery's features, ranking and metrics.

Everything that touches a model runs under one re-entrant lock, so concurrent requests
(the Gradio queue runs several at once) never interleave inside a forward pass, a PETL
swap or a gallery change. Ranking itself is a matrix-vector product and a top-k.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch.nn import functional as F

from demo.gallery import Gallery, GalleryItem, normalise_caption
from upperson.index import ImageIndex, model_key

log = logging.getLogger(__name__)

UPPERSON = "UP-Person"
ZERO_SHOT = "zero-shot CLIP"
VARIANTS = (UPPERSON, ZERO_SHOT)
MAX_QUERY_CHARS = 2000  # longer input is cut before tokenising (the model reads ~75 tokens anyway)


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


@dataclass
class PreparedQuery:
    text: str
    tokens: torch.Tensor  # (1, context)
    notices: list[str]


def _build_zero_shot(model: torch.nn.Module) -> torch.nn.Module:
    """The frozen backbone alone, sharing ``model``'s backbone weights (no file is read again)."""
    from upperson.embedded import zero_shot_config
    from upperson.model import build_model

    cfg = zero_shot_config(model.config)
    if not model.config.freeze_backbone:  # a full fine-tune changed the backbone: rebuild the original
        return build_model(cfg).eval()
    zs = build_model(dataclasses.replace(cfg, pretrained=None))
    src, own = model.state_dict(), zs.state_dict()
    bad = [k for k, v in own.items() if k not in src or src[k].shape != v.shape]
    if bad:
        log.warning("zero-shot model: %d backbone tensors do not match (e.g. %s); loading its weights", len(bad), bad[:2])
        return build_model(cfg).eval()
    zs.load_state_dict({k: src[k] for k in own}, strict=True)
    zs.backbone_fingerprint = model.backbone_fingerprint  # same weights as the source model
    return zs.eval()


class SearchEngine:
    """Models, the current gallery with its cached features, and the search itself.

    ``checkpoints`` maps display names to PETL checkpoint folders of the loaded backbone;
    the name ``default`` (None) is the model's weights at start-up, kept in memory.
    """

    def __init__(self, model: torch.nn.Module, gallery: Gallery, *, cache_dir: Union[str, Path],
                 checkpoints: Optional[dict[str, Optional[Path]]] = None, default_name: str = "embedded",
                 progress: bool = True, batch_size: int = 64, query_threads: Optional[int] = None,
                 index_threads: Optional[int] = None) -> None:
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
        self.tokenizer = build_tokenizer(model.config.name)
        self._bpe = getattr(self.tokenizer, "_tok", None)
        # cloned: for float32 CPU parameters trainable_state_dict returns views of the live weights
        self._initial_petl = {n: v.clone() for n, v in trainable_state_dict(model).items()}
        self.checkpoints: dict[str, Optional[Path]] = {default_name: None, **(checkpoints or {})}
        self.checkpoint_name = default_name
        self._zero_shot: Optional[torch.nn.Module] = None
        self._indexes: dict[str, ImageIndex] = {}
        self._features: dict[str, torch.Tensor] = {}
        self.skipped: list[tuple[Path, str]] = []
        self.gallery = gallery
        self.set_gallery(gallery)

    # ------------------------------------------------------------------ models
    def model_of(self, variant: str) -> torch.nn.Module:
        """The model of ``variant`` (the zero-shot one is built on first use)."""
        if variant == UPPERSON:
            return self.model
        if variant == ZERO_SHOT:
            return self.zero_shot
        raise QueryError(f"unknown model {variant!r}; choose from {', '.join(VARIANTS)}")

    @property
    def zero_shot(self) -> torch.nn.Module:
        with self.lock:
            if self._zero_shot is None:
                self._zero_shot = _build_zero_shot(self.model)
            return self._zero_shot

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

    def _embed(self, model: torch.nn.Module, paths: list[Path]):
        with self._threads(self.index_threads):
            return self._index(model).embed(paths)

    def _index(self, model: torch.nn.Module) -> ImageIndex:
        key = model_key(model)
        if key not in self._indexes:
            self._indexes[key] = ImageIndex(model, self.cache_dir / "demo-index", batch_size=self.batch_size,
                                            progress=self.progress, key=key)
        return self._indexes[key]

    def features(self, variant: str) -> torch.Tensor:
        """(N, D) normalised features of the current gallery for ``variant`` (computed once, cached on disk)."""
        if variant not in VARIANTS:
            raise QueryError(f"unknown model {variant!r}; choose from {', '.join(VARIANTS)}")
        with self.lock:
            if variant not in self._features:
                res = self._embed(self.model_of(variant), [it.path for it in self.gallery.items])
                if res.paths != [it.path for it in self.gallery.items]:
                    # the files changed since the gallery was listed: keep what both models can rank
                    self.gallery = self.gallery.restricted_to(res.paths)
                    self._features.clear()
                    return self.features(variant)
                self._features[variant] = res.features
            return self._features[variant]

    def set_gallery(self, gallery: Gallery) -> None:
        """Index ``gallery`` with UP-Person (only new content is encoded) and make it current."""
        with self.lock:
            res = self._embed(self.model, [it.path for it in gallery.items])
            if not res.paths:
                from demo.gallery import GalleryError
                raise GalleryError(f"{gallery.name}: none of its {len(gallery)} files is a readable image")
            self.skipped = res.skipped
            self.gallery = gallery.restricted_to(res.paths)
            self._features = {UPPERSON: res.features}
            self._caption_pids = self.gallery.caption_pids()
            self._gallery_pids = torch.tensor([-1 if it.pid is None else it.pid for it in self.gallery.items])
            self._by_name = {self.gallery.relative_name(it): i for i, it in enumerate(self.gallery.items)}

    def load_checkpoint(self, name: str) -> None:
        """Swap the PETL weights to checkpoint ``name`` (the backbone stays; nothing is rebuilt)."""
        from upperson.model.checkpoint import load_petl

        if name not in self.checkpoints:
            raise QueryError(f"unknown checkpoint {name!r}; choose from {', '.join(self.checkpoints)}")
        with self.lock:
            if name == self.checkpoint_name:
                return
            path = self.checkpoints[name]
            if path is None:
                with torch.no_grad():
                    params = dict(self.model.named_parameters())
                    for n, v in self._initial_petl.items():
                        params[n].copy_(v.to(params[n].dtype))
            else:
                load_petl(self.model, path)  # checks everything before copying: a mismatch changes nothing
            self.checkpoint_name = name
            self._features.pop(UPPERSON, None)
            self.features(UPPERSON)

    # ------------------------------------------------------------------ queries
    def prepare(self, text: Optional[str]) -> PreparedQuery:
        """Clean, check and tokenise a query; over-long text is truncated with a notice."""
        notices: list[str] = []
        text = "" if text is None else str(text)
        text = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
        text = " ".join(text.split())
        if not text:
            raise QueryError("Type a description of the person, e.g. \"a woman in a red coat with a black backpack\".")
        if len(text) > MAX_QUERY_CHARS:
            text = text[:MAX_QUERY_CHARS]
            notices.append(f"The description was cut to its first {MAX_QUERY_CHARS} characters.")
        tokens = self.tokenizer(text)
        limit = self.tokenizer.context_length - 2
        if self._bpe is not None and hasattr(self._bpe, "encode"):
            ids = self._bpe.encode(text)
            if len(ids) > limit:
                kept = self._bpe.decode(ids[:limit]).strip()
                notices.append(f"The description is {len(ids)} tokens long; the model reads the first {limit} "
                               f"(up to \"...{kept[-40:]}\").")
                text = kept
        return PreparedQuery(text, tokens, notices)

    @torch.no_grad()
    def encode_query(self, tokens: torch.Tensor, variant: str = UPPERSON) -> torch.Tensor:
        """(D,) normalised text feature."""
        with self.lock, self._threads(self.query_threads):
            model = self.model_of(variant)
            return F.normalize(model.encode_text(tokens).float(), dim=-1)[0]

    @staticmethod
    def rank(features: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices) of the top ``k`` gallery rows, best first."""
        sim = features @ query
        k = max(1, min(int(k), sim.shape[0]))
        top = torch.topk(sim, k)
        return top.values, top.indices

    def target_pid(self, text: str, user_pid: Optional[Union[int, str, float]]) -> tuple[Optional[int], str, list[str]]:
        """The identity a query is about: the user's, else the one whose caption it is."""
        notices = []
        if user_pid not in (None, ""):
            try:
                pid = int(float(user_pid))
            except (TypeError, ValueError):
                return None, "", [f"Person id {user_pid!r} is not a number; ignored."]
            if not bool((self._gallery_pids == pid).any()):
                return None, "", [f"Person id {pid} has no image in this gallery; ignored."]
            return pid, "user", notices
        pids = self._caption_pids.get(normalise_caption(text), set())
        if len(pids) == 1:
            return next(iter(pids)), "caption", notices
        if len(pids) > 1:
            notices.append(f"This caption describes {len(pids)} identities; give a person id to score it.")
        return None, "", notices

    def search(self, text: Optional[str], top_k: int = 20, *, pid: Optional[Union[int, str, float]] = None,
               variants: tuple[str, ...] = (UPPERSON,)) -> SearchResult:
        """Rank the gallery for ``text`` with each of ``variants``."""
        q = self.prepare(text)
        with self.lock:
            target, source, more = self.target_pid(str(text), pid)
            result = SearchResult(q.text, q.notices + more, target, source)
            for variant in variants:
                feats = self.features(variant)
                qv = self.encode_query(q.tokens, variant)
                scores, idx = self.rank(feats, qv, top_k)
                items = self.gallery.items
                hits = [
                    Hit(r + 1, int(i), self.gallery.relative_name(items[int(i)]), float(s), items[int(i)].pid,
                        None if target is None else items[int(i)].pid == target)
                    for r, (s, i) in enumerate(zip(scores.tolist(), idx.tolist()))
                ]
                metrics = self.query_metrics(feats @ qv, target) if target is not None else None
                result.rankings.append(Ranking(variant, hits, metrics))
        return result

    def query_metrics(self, similarity: torch.Tensor, pid: int) -> dict[str, float]:
        """R@1/5/10 and AP (percent) of one query over the whole gallery, and the rank of its first match."""
        from upperson.metrics import retrieval_metrics, sorted_matches

        sim = similarity.unsqueeze(0)
        m = retrieval_metrics(sim, torch.tensor([pid]), self._gallery_pids, ranks=(1, 5, 10))
        first = int(sorted_matches(sim, torch.tensor([pid]), self._gallery_pids)[0].nonzero()[0, 0]) + 1
        return {"R1": m["R1"], "R5": m["R5"], "R10": m["R10"], "AP": m["mAP"], "first_match": first,
                "relevant": int((self._gallery_pids == pid).sum())}

    # ------------------------------------------------------------------ explanations
    def item_by_name(self, name: str) -> tuple[int, GalleryItem]:
        """A gallery item by the name the results show; anything else is refused."""
        key = str(name).strip()
        if key.startswith("#") and key[1:].isdigit():
            i = int(key[1:])
        elif key in self._by_name:
            i = self._by_name[key]
        else:
            raise QueryError(f"{key!r} is not an image of the current gallery.")
        if not 0 <= i < len(self.gallery):
            raise QueryError(f"{key!r} is not an image of the current gallery.")
        return i, self.gallery.items[i]

    @torch.no_grad()
    def explain(self, name: str, variant: str = UPPERSON):
        """(image, heatmap or None, item): the prefix-attention map of one gallery image."""
        from PIL import Image

        from demo.heatmap import prefix_attention_map
        from upperson.data import build_transforms

        i, item = self.item_by_name(name)
        with Image.open(item.path) as im:
            image = im.convert("RGB")
        with self.lock:
            model = self.model_of(variant)
            x = build_transforms(model.image_size, train=False)(image)
            with self._threads(self.query_threads):
                heat = prefix_attention_map(model, x)
        return image, heat, item
