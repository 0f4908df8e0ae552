"""Search at scale: build time, memory, latency and recall of each engine on synthetic galleries.

Galleries beyond the real one are synthetic, identity-clustered unit features whose mean
same-identity and different-identity cosine similarities are set to those measured on real
features (:func:`calibrate`): ``x = sqrt(d) m + sqrt(s - d) c_id + sqrt(1 - s) e``, with a shared
direction ``m``, an identity centre ``c_id`` and per-image noise ``e`` (random unit vectors, in
high dimension nearly orthogonal), gives cosines of about ``s`` within an identity and ``d``
between identities. Queries are new images of known identities. Features are written to a
temporary index folder (float16 by default) a segment at a time, so a 10 M gallery never sits
in RAM; with ``reuse`` they are kept in the work folder, with their approximate index, and a
later run with the same settings reuses them instead of writing and building again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import faiss
import numpy as np
import torch

from upperson.evaluation import inference_model
from upperson.search.approximate import AnnConfig, ApproximateSearch, build_ann, train_ann
from upperson.search.engine import ExactSearch, faiss_available
from upperson.search.entries import EntryTable
from upperson.search.store import (MANIFEST, IndexFolderError, IndexStore, Manifest, remove_unlisted_segments,
                                   write_manifest, write_segment)

log = logging.getLogger(__name__)

SEGMENT_ROWS = 1_000_000
#: the synthetic features' generator: a kept gallery (``reuse``) made by another one is written again
GENERATOR = 2
#: the settings an approximate index is built with: a kept one is reused when they match
ANN_BUILD_KEYS = ("kind", "nlist", "m", "nbits", "seed")
#: images generated at once while a segment is written (about 200 MB of float32 at 512-d)
GENERATE_ROWS = 100_000


@dataclass(frozen=True)
class Similarity:
    """Mean cosine similarity of two images of one identity, and of two identities."""

    same: float
    different: float

    def __post_init__(self) -> None:
        if not -1 < self.different < self.same < 1:
            raise ValueError(f"need -1 < different ({self.different}) < same ({self.same}) < 1")


def calibrate(features: np.ndarray, pids: np.ndarray) -> Similarity:
    """The mean same- and different-identity cosines of L2-normalised ``features``."""
    sims = features @ features.T
    same = pids[:, None] == pids[None, :]
    np.fill_diagonal(same, False)
    different = pids[:, None] != pids[None, :]
    return Similarity(float(sims[same].mean()), float(sims[different].mean()))


def _normalise(x: np.ndarray) -> np.ndarray:
    """``x`` with its rows scaled to unit length, in place."""
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    # float32 from the start and in place: generating the gallery is most of a benchmark's write phase
    return _normalise(rng.standard_normal((n, dim), dtype=np.float32))


class SyntheticGallery:
    """Identity-clustered features with the given similarities (see the module docstring)."""

    def __init__(self, dim: int, similarity: Similarity, per_identity: int = 4, seed: int = 0) -> None:
        self.dim, self.sim, self.per_identity = dim, similarity, per_identity
        rng = np.random.default_rng(seed)
        self.shared = _unit(rng, 1, dim)[0]
        self.seed = seed
        d = max(similarity.different, 0.0)
        self.weights = (math.sqrt(d), math.sqrt(similarity.same - d), math.sqrt(1 - similarity.same))

    def images(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One new image's feature for each identity in ``ids``, L2-normalised."""
        a, b, c = self.weights
        x = _unit(rng, len(ids), self.dim)
        x *= np.float32(c)
        centres = self._centres_fast(ids)
        centres *= np.float32(b)
        x += centres
        x += np.float32(a) * self.shared
        return _normalise(x)

    def _centres_fast(self, ids: np.ndarray) -> np.ndarray:
        # centres of a block of consecutive identities from one generator per block of 4,096
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        blocks = ids // 4096
        for block in np.unique(blocks):
            table = _unit(np.random.default_rng((self.seed, 2, int(block))), 4096, self.dim)
            sel = blocks == block
            out[sel] = table[ids[sel] % 4096]
        return out

    def settings(self, n: int, dtype: str) -> dict[str, Any]:
        """What makes a gallery of ``n`` images: recorded in its manifest's ``build``, compared before one is reused."""
        return {"kind": "synthetic-benchmark", "generator": GENERATOR, "rows": n, "dim": self.dim, "dtype": dtype,
                "same": self.sim.same, "different": self.sim.different, "per_identity": self.per_identity,
                "seed": self.seed}

    def write(self, folder: Path, n: int, dtype: str = "float16") -> IndexStore:
        """An index folder of ``n`` images (identity ``i // per_identity``), written a segment at a time."""
        rng = np.random.default_rng((self.seed, 3))
        records = []
        for number, lo in enumerate(range(0, n, SEGMENT_ROWS)):
            hi = min(n, lo + SEGMENT_ROWS)
            segment = np.empty((hi - lo, self.dim), dtype=dtype)
            for a in range(lo, hi, GENERATE_ROWS):  # a block at a time: a 10 M gallery never sits in RAM
                b = min(hi, a + GENERATE_ROWS)
                segment[a - lo:b - lo] = self.images(np.arange(a, b) // self.per_identity, rng)
            records.append(write_segment(folder, number, segment))
            del segment
        rows = np.arange(n, dtype=np.int64)
        entries = EntryTable.from_columns([f"synthetic/{i}" for i in range(n)], rows // SEGMENT_ROWS, rows % SEGMENT_ROWS)
        write_manifest(folder, Manifest(model={"key": "synthetic"}, dim=self.dim, dtype=dtype, segments=records,
                                        entries=entries, build=self.settings(n, dtype)))
        return IndexStore.open(folder, verify=False)

    def kept(self, folder: Path, n: int, dtype: str = "float16") -> tuple[IndexStore, bool]:
        """(the gallery of ``n`` images in ``folder``, whether it was reused): reused when its manifest
        records exactly these settings, else ``folder`` is emptied and written again."""
        if (folder / MANIFEST).is_file():
            try:
                store = IndexStore.open(folder, verify=False)  # sizes and headers checked, not 10 GB of checksums
                if store.manifest.build == self.settings(n, dtype) and store.manifest.complete:
                    log.info("reusing the synthetic gallery in %s", folder)
                    return store, True
            except IndexFolderError as exc:
                log.info("%s cannot be reused (%s)", folder, exc)
            log.info("writing the synthetic gallery in %s again: its settings differ", folder)
        if folder.exists():
            shutil.rmtree(folder)
        return self.write(folder, n, dtype), False


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _rss_parts_mb() -> dict[str, float]:
    """The resident set split into the process's own memory (``RssAnon``: the index, Python,
    torch) and mapped file pages (``RssFile``: memory-mapped features the kernel may drop)."""
    parts = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                parts[f"rss_{key[3:].lower()}_mb"] = round(int(value.split()[0]) / 1024, 1)
    return parts


def _latency(engine, queries: np.ndarray, k: int, repeats: int) -> dict[str, float]:
    """p50/p95 ms of a single query and of the whole batch of queries."""
    singles, batches = [], []
    engine.search(queries[:1], k)  # warm
    for r in range(repeats):
        t0 = time.perf_counter()
        engine.search(queries[r % len(queries)][None], k)
        singles.append((time.perf_counter() - t0) * 1000)
    for _ in range(max(1, repeats // 10)):
        t0 = time.perf_counter()
        engine.search(queries, k)
        batches.append((time.perf_counter() - t0) * 1000)
    return {"single_p50_ms": float(np.percentile(singles, 50)), "single_p95_ms": float(np.percentile(singles, 95)),
            f"batch{len(queries)}_p50_ms": float(np.percentile(batches, 50)),
            f"batch{len(queries)}_p95_ms": float(np.percentile(batches, 95))}


def benchmark_search(sizes: Sequence[int], *, dim: int = 512, similarity: Similarity = Similarity(0.75, 0.35),
                     queries: int = 64, k: int = 10, repeats: int = 50, exact_max: int = 2_000_000,
                     dtype: str = "float16", ann: AnnConfig = AnnConfig(),
                     workdir: Optional[Path] = None, reuse: bool = False) -> list[dict[str, Any]]:
    """One row per (size, engine): build seconds, resident memory, latency and recall@k.

    With ``reuse``, each gallery and its approximate index are kept in ``workdir/synthetic-N-DIMd-DTYPE``
    and reused by a later run with the same settings (a 10 M rerun skips the write and the build);
    otherwise they are written into a temporary folder and removed."""
    if reuse and workdir is None:
        raise ValueError("reuse needs a workdir to keep the galleries in")
    rows = []
    gallery = SyntheticGallery(dim, similarity)
    for n in sizes:
        with contextlib.ExitStack() as stack:
            t0 = time.perf_counter()
            if reuse:
                store, reused = gallery.kept(Path(workdir) / f"synthetic-{n}-{dim}d-{dtype}", n, dtype)
            else:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=workdir, prefix="upperson-search-bench-"))
                store, reused = gallery.write(Path(tmp), n, dtype), False
            write_s = 0.0 if reused else time.perf_counter() - t0
            q = gallery.images(np.random.default_rng(9).integers(0, n // gallery.per_identity, queries),
                               np.random.default_rng(10))
            # exact top-k in one streamed pass (rows are entries here), so recall is reported at 10 M too
            reference = ExactSearch(store, "torch").top_rows(q, k).tolist()
            engines = ["torch"] + (["faiss"] if faiss_available() else []) if n <= exact_max else []
            if faiss_available() and n >= 10_000:
                engines.append("approximate")
            for name in engines:
                before = _rss_mb()
                t0 = time.perf_counter()
                record = None
                ann_reused = False
                if name == "approximate":  # the last engine: the search opens the folder again after the build
                    cfg = ann.resolved(n, dim)
                    record = store.manifest.ann if reuse else None
                    ann_reused = bool(record) and record.get("rows") == n and all(
                        record.get(key) == getattr(cfg, key) for key in ANN_BUILD_KEYS)
                    if not ann_reused:
                        record = build_ann(store, ann)
                        store.manifest.ann = record
                        write_manifest(store.folder, store.manifest)
                        remove_unlisted_segments(store.folder, store.manifest)  # a kept folder's older index
                    folder, store = store.folder, None
                    gc.collect()
                    engine = ApproximateSearch(IndexStore.open(folder, verify=False), nprobe=cfg.nprobe,
                                               rerank=cfg.rerank)
                else:
                    engine = ExactSearch(store, name)
                # a reused index: its recorded build (training and filling; the recall measurement not included)
                build_s = record["build_seconds"] if ann_reused else time.perf_counter() - t0
                row = {"gallery": n, "dim": dim, "dtype": dtype, "engine": name, "write_s": round(write_s, 2),
                       "build_s": round(build_s, 2), "gallery_reused": reused, "rss_mb": round(_rss_mb(), 1),
                       "rss_added_mb": round(_rss_mb() - before, 1), **_latency(engine, q, k, repeats)}
                row |= _rss_parts_mb()  # after the queries: what searching keeps resident
                got = [[h.entry for h in hits] for hits in engine.search(q, k)]
                row[f"recall@{k}"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(reference, got)]))
                if record:
                    row |= {"ann_reused": ann_reused, "nlist": record["nlist"], "nprobe": engine.cfg.nprobe, "rerank": engine.cfg.rerank}
                    if (record["nprobe"], record["rerank"]) == (engine.cfg.nprobe, engine.cfg.rerank):
                        row["recall@10_build"] = record["recall_at_10"]  # measured at the build's settings
                rows.append(row)
                log.info("%s", row)  # a long run shows each engine as it is measured
                del engine
    return rows


def indexing_throughput(model: torch.nn.Module, *, batch_size: int = 64, batches: int = 5) -> float:
    """Images per second through the merged image tower (random pixels: decoding not included)."""
    encoder = inference_model(model)
    h, w = model.image_size
    x = torch.randn(batch_size, 3, h, w)
    with torch.no_grad():
        encoder.encode_image(x)
        t0 = time.perf_counter()
        for _ in range(batches):
            encoder.encode_image(x)
    return batch_size * batches / (time.perf_counter() - t0)


#: shares of the lists probed and re-rank depths ``benchmark --search --features`` tries with each index
PROBE_SHARES = (0.05, 0.10)
RERANK_DEPTHS = (256, 1024)


def held_out_queries(store: IndexStore, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(global rows, features) of ``n`` rows of gallery files chosen at random: image queries whose
    own row is left out of every ranking."""
    used = np.unique(store.flat_rows())  # rows that no file uses any more (after updates) are not queries
    held = np.sort(np.random.default_rng(seed).choice(used, size=min(len(used), n), replace=False))
    return held, store.rows_at(held)


def feature_grid(dim: int) -> tuple[AnnConfig, ...]:
    """The approximate indexes ``benchmark --search --features`` trains: IVF-PQ with dim/4-byte codes
    (the default) and IVF-flat; about 4 sqrt(rows) lists each."""
    return AnnConfig(kind="ivfpq", m=max(1, dim // 4)), AnnConfig(kind="ivfflat")


def benchmark_features(store: IndexStore, *, configs: Optional[Sequence[AnnConfig]] = None,
                       shares: Sequence[float] = PROBE_SHARES, reranks: Sequence[int] = RERANK_DEPTHS,
                       queries: int = 200, k: int = 10, repeats: int = 50) -> list[dict[str, Any]]:
    """Exact engines and approximate settings on an index's own features: recall@k against exact
    search (each query a stored image, its own row left out), latency and memory."""
    held, q = held_out_queries(store, queries)
    exact = ExactSearch(store, "torch")
    usable = np.zeros(int(store.offsets[-1]), dtype=bool)
    usable[store.flat_rows()] = True  # search returns gallery files: rows no file uses are no answer
    truth = [set(r) for r in exact.top_rows(q, k, exclude=held, usable=usable).tolist()]
    rows: list[dict[str, Any]] = []
    base = {"gallery": int(store.offsets[-1]), "dim": store.manifest.dim, "dtype": store.manifest.dtype}
    engines = [("torch", exact)] + ([("faiss", ExactSearch(store, "faiss"))] if faiss_available() else [])
    for name, engine in engines:
        rows.append({**base, "engine": name, "rss_mb": round(_rss_mb(), 1), **_latency(engine, q[:64], k, repeats // 5)})
    for config in configs or feature_grid(store.manifest.dim):
        index, cfg, seconds = train_ann(store, config)
        size_mb = faiss.serialize_index(index).nbytes / 2**20
        for share in shares:
            for depth in reranks:
                nprobe = max(1, round(cfg.nlist * share))
                record = {**asdict(cfg), "nprobe": nprobe, "rerank": depth}
                engine = ApproximateSearch(store, index=index, record=record)
                found = _approximate_rows(engine, q, held, k)
                recall = float(np.mean([len(t & f) / k for t, f in zip(truth, found)]))
                rows.append({**base, "engine": f"approximate-{cfg.kind}", "nlist": cfg.nlist, "nprobe": nprobe,
                             "probed": share, "m": cfg.m if cfg.kind == "ivfpq" else None, "rerank": depth,
                             "build_s": round(seconds, 2), "index_mb": round(size_mb, 1), f"recall@{k}": recall,
                             "rss_mb": round(_rss_mb(), 1), **_latency(engine, q[:64], k, repeats)})
                log.debug("%s", rows[-1])
        del index
    return rows


def _approximate_rows(engine: ApproximateSearch, q: np.ndarray, held: np.ndarray, k: int) -> list[set[int]]:
    """The top-k global rows of each query by approximate search, its own row left out."""
    flat = engine.store.flat_rows()
    out = []
    for hits, own in zip(engine.search(q, 2 * k + 1), held):  # files sharing a row count once
        rows = list(dict.fromkeys(int(flat[h.entry]) for h in hits))
        out.append(set([r for r in rows if r != own][:k]))
    return out
