"""Exact inner-product search over an index's entries: brute force (torch) or FAISS's flat index.

Both rank the gallery's entries by score, highest first, and break ties by entry order (the
order of the index's manifest), so they return the same ranking. Features and queries are
L2-normalised, so the score is the cosine similarity.

- ``torch``: the segments' rows times the query, a chunk of rows at a time read from the
  segment files with positional reads (:meth:`IndexStore.chunks`; float16 segments are converted
  a chunk at a time), so memory stays at one chunk plus one score per row: no mapped file pages.
- ``faiss``: ``faiss.IndexFlatIP`` over the rows (held in RAM as float32). FAISS returns the best
  rows, enough of them that every row tied with the k-th is among them, and they are ranked
  with the same tie rule. The two engines sum the products in different orders, so scores can
  differ in the last bit of a float32: rankings are equal except between scores closer than
  that (about 1e-7).

Files with the same content share a row and so a score; each is its own result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from upperson.search.store import CHUNK_ROWS, IndexStore

log = logging.getLogger(__name__)

ENGINES = ("torch", "faiss")
#: rows asked of FAISS beyond k (more are asked for while the last one ties with the k-th)
FAISS_MARGIN = 32


@dataclass(frozen=True)
class Hit:
    """One result: the entry number in the index, its file and its score."""

    entry: int
    path: str
    score: float


def faiss_available() -> bool:
    """Whether ``faiss`` (faiss-cpu or faiss-gpu) imports."""
    try:
        import faiss  # noqa: F401  (optional dependency, imported only when asked for)
    except ImportError:
        return False
    return True


class ExactSearch:
    """Exact top-k over an :class:`IndexStore`'s entries, with one tie rule for every engine."""

    def __init__(self, store: IndexStore, engine: str = "torch") -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown search engine {engine!r}; choose from {', '.join(ENGINES)}")
        if any(f.dim != store.manifest.dim for f in store.files):
            raise ValueError(f"{store.folder}: a segment's width differs from the manifest's dim")
        self.store = store
        self.engine = engine
        self._offsets = store.offsets
        self._flat_rows = store.flat_rows()  # entry -> global row
        # entries of each global row, for expanding rows (shared by duplicate files) into entries
        order = np.argsort(self._flat_rows, kind="stable")
        self._entries_by_row = (self._flat_rows[order], order)
        self._faiss = self._build_faiss() if engine == "faiss" else None

    def __len__(self) -> int:
        return len(self._flat_rows)

    # ------------------------------------------------------------------ scoring
    def row_scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, rows) float32 scores of every stored row, a chunk at a time."""
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        out = np.empty((q.shape[0], int(self._offsets[-1])), dtype=np.float32)
        for first, chunk in self.store.chunks(CHUNK_ROWS):
            rows = torch.from_numpy(chunk)
            out[:, first:first + len(rows)] = (q @ rows.T).numpy()
        return out

    def top_rows(self, queries: np.ndarray, k: int, exclude: Optional[np.ndarray] = None,
                 usable: Optional[np.ndarray] = None) -> np.ndarray:
        """(Q, k) global rows with the best scores for each query, best first, in one pass over the
        segments a chunk at a time (memory: one chunk of scores, not Q x rows); ``exclude`` is one
        row per query left out (the query's own, for held-out stored images); ``usable`` (a bool
        per row) leaves out the rows it marks False (rows no entry uses any more)."""
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        n = len(q)
        best_s = np.full((n, k), -np.inf, dtype=np.float32)
        best_r = np.full((n, k), -1, dtype=np.int64)
        for first, chunk in self.store.chunks(CHUNK_ROWS):
            rows = torch.from_numpy(chunk)
            scores = (q @ rows.T).numpy()
            if usable is not None:
                scores[:, ~usable[first:first + len(rows)]] = -np.inf
            if exclude is not None:
                inside = (exclude >= first) & (exclude < first + len(rows))
                scores[np.nonzero(inside)[0], exclude[inside] - first] = -np.inf
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
            cand_r = np.concatenate([best_r, top + first], axis=1)
            order = np.lexsort((cand_r, -cand_s.astype(np.float64)), axis=1)[:, :k]
            best_s, best_r = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_r, order, 1)
        return best_r

    # ------------------------------------------------------------------ ranking
    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The top ``k`` entries for each query row (``(Q, D)`` or ``(D,)``)."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.store.manifest.dim:
            raise ValueError(f"query features have dim {queries.shape[1]}, the index {self.store.manifest.dim}")
        if not np.isfinite(queries).all():
            raise ValueError("the query features are not finite (NaN or inf): the model's weights are broken")
        k = max(0, min(int(k), len(self)))
        if k == 0:
            return [[] for _ in queries]
        if self._faiss is None:
            scores = self.row_scores(queries)[:, self._flat_rows]  # (Q, entries)
            return [self._rank(s, np.arange(len(s)), k) for s in scores]
        return [self._faiss_one(q, k) for q in queries]

    def _rank(self, scores: np.ndarray, entries: np.ndarray, k: int) -> list[Hit]:
        """The best ``k`` of ``entries`` by score, ties by entry number."""
        if len(entries) > k:
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = scores >= kth  # every entry tied with the k-th is a candidate
            scores, entries = scores[keep], entries[keep]
        order = np.lexsort((entries, -scores.astype(np.float64)))[:k]
        paths = self.store.manifest.entries
        return [Hit(int(entries[i]), paths[int(entries[i])].path, float(scores[i])) for i in order]

    # ------------------------------------------------------------------ faiss
    def _build_faiss(self):
        import faiss  # optional dependency: only when the faiss engine is asked for

        index = faiss.IndexFlatIP(self.store.manifest.dim)
        for _, chunk in self.store.chunks(CHUNK_ROWS):
            index.add(chunk)
        return index

    def _expand(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entries, how many entries each row has) of global rows (several files may share a row;
        rows no file uses any more have none)."""
        sorted_rows, entry_order = self._entries_by_row
        lo = np.searchsorted(sorted_rows, rows, side="left")
        hi = np.searchsorted(sorted_rows, rows, side="right")
        entries = np.concatenate([entry_order[a:b] for a, b in zip(lo, hi)]) if len(rows) else np.zeros(0, np.int64)
        return entries, hi - lo

    def rank_rows(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[Hit]:
        """The top ``k`` entries of candidate global ``rows`` with their ``scores``, ties by entry order."""
        entries, counts = self._expand(np.asarray(rows))
        return self._rank(np.repeat(np.asarray(scores), counts), entries, k)

    def _faiss_one(self, query: np.ndarray, k: int) -> list[Hit]:
        total = int(self._offsets[-1])
        want = min(total, k + FAISS_MARGIN)
        while True:
            scores, rows = self._faiss.search(query[None, :], want)
            scores, rows = scores[0], rows[0]
            keep = rows >= 0
            scores, rows = scores[keep], rows[keep]
            entries, counts = self._expand(rows)
            # enough entries, and the last row scored below the k-th entry: nothing further can tie
            if want >= total or (counts.sum() >= k and scores[-1] < np.repeat(scores, counts)[k - 1]):
                break
            want = min(total, want * 2)
        return self._rank(np.repeat(scores, counts), entries, k)


def recommend_engine(entries: int, threshold: Optional[int] = 2_000_000) -> Optional[str]:
    """A sentence recommending approximate search for galleries past ``threshold`` entries, else None."""
    if threshold is not None and entries > threshold:
        return (f"the index holds {entries:,} images: exact search reads every feature for each query; "
                "build an approximate index (`index ... --approximate`) and search with --engine approximate")
    return None
