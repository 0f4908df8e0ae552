"""Text-to-image retrieval metrics as IRRA defines them (SPEC 6), vectorised in torch.

For each query the gallery is sorted by similarity, descending. Ties are broken by gallery
order (a stable sort), so results are deterministic. A gallery item is relevant when its pid
equals the query's.

- R@k (CMC): percent of queries with a relevant item in the top k.
- AP: mean over the relevant items of (relevant items up to its rank) / its rank.
- INP: (number of relevant items) / (rank of the last relevant item).

Queries with no relevant item in the gallery are left out of every metric (and counted).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def sorted_matches(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> torch.Tensor:
    """(Q, G) bool: whether the item at each rank is relevant to each query."""
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    return gallery_pids.to(order.device)[order] == query_pids.to(order.device).view(-1, 1)


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ranks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """R@k for each k in ``ranks``, mAP and mINP, in percent, plus counts.

    ``similarity`` is (queries, gallery); it is processed ``chunk`` queries at a time so
    that large test sets (ICFG-PEDES: 19,848 x 19,848) fit in memory.
    """
    if similarity.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"similarity {tuple(similarity.shape)} does not match "
                         f"{len(query_pids)} queries x {len(gallery_pids)} gallery items")
    hits = {k: 0.0 for k in ranks}
    ap_sum = inp_sum = 0.0
    valid = 0
    positions = torch.arange(1, similarity.shape[1] + 1, device=similarity.device, dtype=torch.float64)
    for start in range(0, similarity.shape[0], chunk):
        matches = sorted_matches(similarity[start:start + chunk], query_pids[start:start + chunk], gallery_pids)
        num_rel = matches.sum(dim=1)
        keep = num_rel > 0
        matches, num_rel = matches[keep], num_rel[keep].double()
        valid += int(keep.sum())
        m = matches.double()
        cum = m.cumsum(dim=1)
        for k in ranks:
            hits[k] += float((cum[:, min(k, m.shape[1]) - 1] > 0).sum())
        ap_sum += float(((cum / positions) * m).sum(dim=1).div(num_rel).sum())
        last_rank = (m * positions).max(dim=1).values
        inp_sum += float((num_rel / last_rank).sum())
    skipped = similarity.shape[0] - valid
    if skipped:
        log.warning("%d of %d queries have no relevant gallery item and are left out", skipped, similarity.shape[0])
    if valid == 0:
        raise ValueError("no query has a relevant item in the gallery; check the pids")
    out = {f"R{k}": 100.0 * hits[k] / valid for k in ranks}
    out["mAP"] = 100.0 * ap_sum / valid
    out["mINP"] = 100.0 * inp_sum / valid
    out["queries"] = valid
    out["gallery"] = int(similarity.shape[1])
    if skipped:
        out["queries_without_match"] = skipped
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """A one-table text rendering, like the field's tools print."""
    keys = [k for k in ("R1", "R5", "R10", "mAP", "mINP") if k in metrics]
    head = " | ".join(f"{k:>6}" for k in keys)
    row = " | ".join(f"{metrics[k]:6.2f}" for k in keys)
    return f"| {head} |\n| {row} |"
