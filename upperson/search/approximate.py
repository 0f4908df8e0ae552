"""Approximate search, opt-in: a FAISS IVF index over the rows, with an exact re-rank.

The inverted file finds ``rerank`` candidate rows by probing ``nprobe`` of its ``nlist`` lists,
scoring them with product-quantised codes (``kind="ivfpq"``, the default: ``m`` bytes a row) or
with the features themselves (``"ivfflat"``: 4 x dim bytes a row); the candidates are then scored exactly from the stored features and
ranked with the exact engines' tie rule. Quantised scores alone spoil text queries at scale
(clip-retrieval #76), hence the re-rank, and hence approximate search is never the default.

Every build measures recall@10 against exact search on held-out queries: ``recall_queries``
stored rows, chosen at random, each searched with its own row left out of both rankings
(image-to-image: text queries are not known when an index is built; ``benchmark --search``
measures text queries). The recall is recorded in the manifest and printed by ``search``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import faiss
import numpy as np
import torch

from upperson.io import atomic_path, file_digest
from upperson.search.engine import CHUNK_ROWS, ExactSearch, Hit
from upperson.search.store import ANN_DIR, IndexFolderError, IndexStore

log = logging.getLogger(__name__)

#: below this many rows exact search is fast and IVF-PQ cannot be trained well
MIN_ROWS = 10_000
#: rows used to train the coarse quantiser and the product quantiser
MAX_TRAIN_ROWS = 100_000
KINDS = ("ivfpq", "ivfflat")


@dataclass(frozen=True)
class AnnConfig:
    """IVF settings; ``None`` means the default derived from the index's size."""

    nlist: Optional[int] = None  # default: about 4 sqrt(rows)
    nprobe: Optional[int] = None  # default: 5 % of the lists (at most 10 % is the target)
    m: Optional[int] = None  # sub-quantisers; default: dim / 4 (it must divide dim)
    nbits: int = 8
    rerank: int = 256  # candidates scored exactly
    recall_queries: int = 200
    seed: int = 0
    kind: str = "ivfpq"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"approximate index kind {self.kind!r}: choose {' or '.join(KINDS)}")
        for name in ("nlist", "nprobe", "m"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} {value}: give a number >= 1 (or leave it to the default)")
        if not 4 <= self.nbits <= 12:
            raise ValueError(f"nbits {self.nbits}: give 4 to 12 bits per code")
        if self.rerank < 1 or self.recall_queries < 1:
            raise ValueError(f"rerank {self.rerank} and recall queries {self.recall_queries} must be >= 1")

    def resolved(self, rows: int, dim: int) -> "AnnConfig":
        """The settings with every default filled in for ``rows`` x ``dim`` features."""
        nlist = self.nlist or max(16, int(4 * math.sqrt(rows)))
        nprobe = self.nprobe or max(1, round(nlist * 0.05))
        m = self.m or max(1, dim // 4)
        if dim % m:
            raise ValueError(f"m {m} must divide the feature dimension {dim}")
        if nprobe > nlist:
            raise ValueError(f"nprobe {nprobe} is more than the {nlist} lists")
        return AnnConfig(nlist, nprobe, m, self.nbits, self.rerank, self.recall_queries, self.seed, self.kind)


def train_ann(store: IndexStore, config: AnnConfig = AnnConfig()) -> tuple[Any, AnnConfig, float]:
    """Train and fill an IVF index over every row of ``store``, in memory: (index, the resolved
    settings, seconds)."""
    rows = int(store.offsets[-1])
    dim = store.manifest.dim
    if rows < MIN_ROWS:
        raise IndexFolderError(f"{store.folder} holds {rows:,} images: approximate search needs at least "
                               f"{MIN_ROWS:,}; exact search is fast at this size")
    cfg = config.resolved(rows, dim)
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    train = store.rows_at(np.sort(rng.choice(rows, size=min(rows, max(MAX_TRAIN_ROWS, 39 * cfg.nlist)),
                                                replace=False)))
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    quantiser = faiss.IndexFlatIP(dim)
    if cfg.kind == "ivfflat":
        index = faiss.IndexIVFFlat(quantiser, dim, cfg.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantiser, dim, cfg.nlist, cfg.m, cfg.nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = cfg.seed
    index.train(train)
    for _, chunk in store.chunks(CHUNK_ROWS):
        index.add(chunk)
    return index, cfg, time.perf_counter() - start


def build_ann(store: IndexStore, config: AnnConfig = AnnConfig()) -> dict[str, Any]:
    """Train and fill an IVF index over every row of ``store``; write it into ``store.folder/ann/``.

    Returns the manifest record: the file and its SHA-256, the settings, the build time, the
    index's memory and the measured recall@10.
    """
    index, cfg, seconds = train_ann(store, config)
    rows = index.ntotal
    name = f"{cfg.kind}-{rows}.faiss"
    path = store.folder / ANN_DIR / name
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
        digest = file_digest(tmp)
    record = {"file": name, "sha256": digest, "rows": rows, **asdict(cfg),
              "build_seconds": round(seconds, 2), "memory_bytes": path.stat().st_size}
    record["recall_at_10"] = measure_recall(store, index, cfg, rows)
    return record


def _candidates(index, queries: np.ndarray, cfg: AnnConfig) -> np.ndarray:
    index.nprobe = cfg.nprobe
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), cfg.rerank)
    return rows


def _rerank(store: IndexStore, query: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, exact scores) of candidate rows, rows sorted ascending."""
    rows = np.unique(rows[rows >= 0])
    feats = torch.from_numpy(store.rows_at(rows))
    return rows, (feats @ torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))).numpy()


def measure_recall(store: IndexStore, index, cfg: AnnConfig, rows: int, k: int = 10) -> float:
    """Mean recall@k of approximate search (with the re-rank) against exact search, over held-out rows."""
    rng = np.random.default_rng(cfg.seed + 1)
    held_out = np.sort(rng.choice(rows, size=min(rows, cfg.recall_queries), replace=False))
    queries = store.rows_at(held_out)
    # one streamed pass: memory stays at a chunk of scores at 10 M rows; the query's own row is in neither ranking
    exact = ExactSearch(store, "torch").top_rows(queries, k, exclude=held_out)
    hits = 0
    for qi, (q, own) in enumerate(zip(queries, held_out)):
        truth = set(exact[qi].tolist())
        cand = _candidates(index, q[None], cfg)[0]
        cand = cand[cand != own]
        cand_rows, cand_scores = _rerank(store, q, cand)
        found = set(cand_rows[np.argsort(-cand_scores, kind="stable")[:k]].tolist())
        hits += len(truth & found)
    return hits / (k * len(held_out))


class ApproximateSearch:
    """Top-k over an index's entries from IVF-PQ candidates, re-ranked exactly, ties by entry order."""

    def __init__(self, store: IndexStore, nprobe: Optional[int] = None, rerank: Optional[int] = None,
                 *, index: Any = None, record: Optional[dict[str, Any]] = None) -> None:
        """The index's approximate part, or (``index`` and its ``record``, as :func:`train_ann` and
        :func:`dataclasses.asdict` of its settings give them) one held in memory."""
        if index is not None:
            self._setup(store, dict(record or {}), index, nprobe, rerank)
            return
        record = store.manifest.ann
        if not record:
            raise IndexFolderError(f"{store.folder} has no approximate index: build one with "
                                   "`python -m upperson index ... --approximate`")
        rows = int(store.offsets[-1])
        if record["rows"] != rows:
            raise IndexFolderError(f"{store.folder}: the approximate index covers {record['rows']:,} of {rows:,} rows "
                                   "(the index was updated since); build it again with --approximate")
        path = store.folder / ANN_DIR / record["file"]
        if not path.is_file() or file_digest(path) != record["sha256"]:
            raise IndexFolderError(f"{path} is missing or corrupted (its sha256 differs from the manifest's); "
                                   "build it again with --approximate")
        self._setup(store, record, faiss.read_index(str(path)), nprobe, rerank)

    def _setup(self, store: IndexStore, record: dict[str, Any], index: Any, nprobe: Optional[int],
               rerank: Optional[int]) -> None:
        self.store = store
        self.record = record
        self.cfg = AnnConfig(record["nlist"], nprobe or record["nprobe"], record["m"], record["nbits"],
                             rerank or record["rerank"], record["recall_queries"], record["seed"],
                             record.get("kind", "ivfpq"))
        if self.cfg.nprobe > self.cfg.nlist:
            raise ValueError(f"--nprobe {self.cfg.nprobe} is more than the {self.cfg.nlist} lists")
        self.index = index
        self._exact = ExactSearch(store, "torch")  # its entry maps and tie rule

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if not np.isfinite(queries).all():
            raise ValueError("the query features are not finite (NaN or inf): the model's weights are broken")
        out = []
        for q, cand in zip(queries, _candidates(self.index, queries, self.cfg)):
            rows, scores = _rerank(self.store, q, cand)
            out.append(self._exact.rank_rows(rows, scores, k))
        return out
