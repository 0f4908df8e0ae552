"""Text-to-image retrieval metrics as IRRA defines them (docs/method.md), without sorting the gallery.

For each query the gallery is ranked by similarity, descending. Ties are broken by gallery
order (as a stable sort would), so results are deterministic. A gallery item is relevant when
its pid equals the query's.

- R@k (CMC): percent of queries with a relevant item in the top k.
- AP: mean over the relevant items of (relevant items up to its rank) / its rank.
- INP: (number of relevant items) / (rank of the last relevant item).

Queries with no relevant item in the gallery are left out of every metric (and counted).
Similarities must be finite: a NaN or inf is refused (:class:`NonFiniteScoresError`) before
any metric is computed, so every metric lies in [0, 100].

Only the ranks of the relevant items are needed, so none of the rows is sorted: the rank of a
relevant item is 1 + the number of gallery items ranked above it, counted by comparison
(an item with an equal score earlier in the gallery counts as above).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

# Largest number of (query, threshold, gallery item) comparisons held at once per thread (bool bytes).
_BLOCK_ELEMENTS = 1 << 22


class NonFiniteScoresError(ValueError):
    """Similarities holding NaN or inf: ranks (and so metrics) would be meaningless."""


def check_finite_scores(similarity: torch.Tensor, what: str = "similarities") -> None:
    """Raise :class:`NonFiniteScoresError` naming how many of ``similarity`` are NaN or inf, and the first."""
    finite = torch.isfinite(similarity)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    first = tuple(int(i) for i in bad[0])
    raise NonFiniteScoresError(
        f"{what}: {len(bad)} of {similarity.numel()} are not finite (NaN or inf; the first at {first}); "
        "the model's weights or features overflow: no metric is computed"
    )


def sorted_matches(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> torch.Tensor:
    """(Q, G) bool: whether the item at each rank is relevant to each query (full stable sort)."""
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    return gallery_pids.to(order.device)[order] == query_pids.to(order.device).view(-1, 1)


@dataclasses.dataclass(frozen=True)
class PerQueryMetrics:
    """Per-query results over the queries that have at least one relevant gallery item.

    Arrays are aligned: entry n describes query ``query_index[n]`` (an index into the query
    list). ``first_rank`` is 1-based; ``ap`` and ``inp`` are fractions in [0, 1].
    """

    query_index: np.ndarray   # int64
    first_rank: np.ndarray    # int64
    ap: np.ndarray            # float64
    inp: np.ndarray           # float64
    num_relevant: np.ndarray  # int64
    num_queries: int          # all queries, including those without a match
    num_gallery: int

    @property
    def num_without_match(self) -> int:
        """Queries left out because no gallery item shares their pid."""
        return self.num_queries - len(self.query_index)

    def aggregate(self, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """R@k for each k in ``ranks``, mAP and mINP in percent, plus counts (as ``retrieval_metrics``)."""
        skipped = self.num_without_match
        if skipped:
            log.warning("%d of %d queries have no relevant gallery item and are left out", skipped, self.num_queries)
        valid = len(self.query_index)
        if valid == 0:
            raise ValueError("no query has a relevant item in the gallery; check the pids")
        out = {f"R{k}": 100.0 * float(np.count_nonzero(self.first_rank <= k)) / valid for k in ranks}
        out["mAP"] = 100.0 * float(self.ap.sum()) / valid
        out["mINP"] = 100.0 * float(self.inp.sum()) / valid
        out["queries"] = valid
        out["gallery"] = self.num_gallery
        if skipped:
            out["queries_without_match"] = skipped
        return out


def _count_above(rows: np.ndarray, rel_idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, K) number of gallery items ranked above each relevant item (invalid slots: 0).

    Counts the items scored strictly above (``>``) and at or above (``>=``, as ``>`` the next
    float down) each relevant score; only where some other item has the same score, the equal
    items earlier in gallery order are counted one by one (the tie rule).
    """
    b, g = rows.shape
    safe = np.where(valid, rel_idx, 0)
    t = np.take_along_axis(rows, safe, axis=1)
    t = np.where(valid, t, np.inf).astype(rows.dtype)
    with np.errstate(over="ignore"):  # the lowest finite score steps down to -inf: handled as a tie below
        below = np.nextafter(t, -np.inf).astype(rows.dtype)
    both = np.concatenate([t, below], axis=1)  # (B, 2K)
    counts = np.count_nonzero(rows[:, None, :] > both[:, :, None], axis=2)
    k = t.shape[1]
    above, at_or_above = counts[:, :k], counts[:, k:]
    tied_r, tied_k = np.nonzero(valid & ((at_or_above - above > 1) | (t == -np.inf)))
    for s in range(0, len(tied_r), 256):
        r, c = tied_r[s:s + 256], tied_k[s:s + 256]
        earlier = np.arange(g)[None, :] < safe[r, c][:, None]
        above[r, c] += np.count_nonzero((rows[r] == t[r, c][:, None]) & earlier, axis=1)
    return np.where(valid, above, 0)


def per_query_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    chunk: int = 1024,
) -> PerQueryMetrics:
    """Rank of the first relevant item, AP, INP and the relevant count of every query with a match.

    ``similarity`` is (queries, gallery), on any device; it is read ``chunk`` queries at a
    time (fewer when a query has many relevant items), so ICFG-PEDES's 19,848 x 19,848 fits.
    Blocks of queries run on ``torch.get_num_threads()`` threads.
    """
    if similarity.dim() != 2 or similarity.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"similarity {tuple(similarity.shape)} does not match "
                         f"{len(query_pids)} queries x {len(gallery_pids)} gallery items")
    check_finite_scores(similarity)
    num_q, num_g = similarity.shape
    qp = np.asarray(torch.as_tensor(query_pids).cpu(), dtype=np.int64).reshape(-1)
    gp = np.asarray(torch.as_tensor(gallery_pids).cpu(), dtype=np.int64).reshape(-1)
    # gallery indices grouped by pid, in gallery order
    by_pid = np.argsort(gp, kind="stable")
    sorted_pids = gp[by_pid]
    start = np.searchsorted(sorted_pids, qp, side="left")
    num_rel = np.searchsorted(sorted_pids, qp, side="right") - start
    queries = np.flatnonzero(num_rel > 0)
    # similar relevant counts in one block: little padding
    queries = queries[np.argsort(num_rel[queries], kind="stable")]
    first = np.empty(len(queries), np.int64)
    ap = np.empty(len(queries), np.float64)
    inp = np.empty(len(queries), np.float64)
    chunk = max(1, int(chunk))
    blocks, p = [], 0
    while p < len(queries):
        end = min(p + chunk, len(queries))
        while end - p > 1 and 2 * int(num_rel[queries[end - 1]]) * (end - p) * num_g > _BLOCK_ELEMENTS:
            end = p + max(1, (end - p) // 2)
        blocks.append((p, end))
        p = end

    def run_block(span: tuple[int, int]) -> None:
        p, end = span
        block = queries[p:end]
        k_max = int(num_rel[block[-1]])
        slot = np.arange(k_max)[None, :]
        valid = slot < num_rel[block][:, None]
        rel_idx = by_pid[np.minimum(start[block][:, None] + slot, len(gp) - 1)]
        rows = similarity[torch.from_numpy(block).to(similarity.device)].detach()
        rows = rows.cpu().numpy() if rows.dtype in (torch.float32, torch.float64) else rows.float().cpu().numpy()
        ranks = _count_above(rows, rel_idx, valid) + 1
        ranks = np.sort(np.where(valid, ranks, np.iinfo(np.int64).max), axis=1)
        n = num_rel[block]
        position = np.arange(1, k_max + 1, dtype=np.float64)[None, :]
        first[p:end] = ranks[:, 0]
        ap[p:end] = np.where(valid, position / np.where(valid, ranks, 1), 0.0).sum(axis=1) / n
        inp[p:end] = n / ranks[np.arange(len(block)), n - 1]

    # numpy releases the GIL in the comparisons: as many threads as torch uses (each block
    # writes its own slice of the outputs)
    threads = min(torch.get_num_threads(), len(blocks))
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run_block, blocks))
    else:
        for span in blocks:
            run_block(span)
    back = np.argsort(queries, kind="stable")
    return PerQueryMetrics(
        query_index=queries[back].astype(np.int64), first_rank=first[back], ap=ap[back], inp=inp[back],
        num_relevant=num_rel[queries[back]].astype(np.int64), num_queries=int(num_q), num_gallery=int(num_g),
    )


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ranks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """R@k for each k in ``ranks``, mAP and mINP, in percent, plus counts.

    ``similarity`` is (queries, gallery); it is processed in chunks of queries so that large
    test sets (ICFG-PEDES: 19,848 x 19,848) fit in memory.
    """
    return per_query_metrics(similarity, query_pids, gallery_pids, chunk=chunk).aggregate(ranks)


def format_metrics(metrics: dict[str, float]) -> str:
    """A one-table text rendering, like the field's tools print."""
    keys = [k for k in ("R1", "R5", "R10", "mAP", "mINP") if k in metrics]
    head = " | ".join(f"{k:>6}" for k in keys)
    row = " | ".join(f"{metrics[k]:6.2f}" for k in keys)
    return f"| {head} |\n| {row} |"
