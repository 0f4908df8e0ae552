"""Losses against their formulas, metrics against hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from upperson.losses import itc_loss, sdm_loss
from upperson.metrics import retrieval_metrics


def _sdm_by_loops(f, g, pids, tau):
    f, g = F.normalize(f, dim=-1), F.normalize(g, dim=-1)
    n = len(pids)
    total = 0.0
    for a, b in ((f, g), (g, f)):
        for i in range(n):
            logits = [float(a[i] @ b[j]) / tau for j in range(n)]
            z = sum(math.exp(x) for x in logits)
            same = [1.0 if pids[i] == pids[j] else 0.0 for j in range(n)]
            for j in range(n):
                p = math.exp(logits[j]) / z
                q = same[j] / sum(same)
                total += p * (math.log(p) - math.log(q + 1e-8)) / n
    return total


def test_sdm_matches_its_formula():
    torch.manual_seed(0)
    f, g = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    pids = torch.tensor([3, 1, 3, 2, 1, 3])
    assert sdm_loss(f, g, pids, temperature=0.5).item() == pytest.approx(_sdm_by_loops(f, g, pids, 0.5), rel=1e-5)


def test_sdm_is_smallest_when_similarities_follow_the_identities():
    pids = torch.tensor([0, 0, 1, 2])
    centers = torch.eye(3)[pids]
    good = sdm_loss(centers, centers, pids)
    bad = sdm_loss(centers, centers[torch.tensor([2, 3, 0, 1])], pids)
    assert good < 1e-3 < bad


def test_itc_is_symmetric_cross_entropy():
    torch.manual_seed(1)
    f, g = torch.randn(5, 8), torch.randn(5, 8)
    logits = F.normalize(f, dim=-1) @ F.normalize(g, dim=-1).t() / 0.1
    expected = sum(-torch.log_softmax(logits, 1)[i, i] for i in range(5)) / 5 + \
        sum(-torch.log_softmax(logits.t(), 1)[i, i] for i in range(5)) / 5
    assert itc_loss(f, g, torch.arange(5), temperature=0.1).item() == pytest.approx(expected.item(), rel=1e-5)


def test_metrics_hand_worked_case():
    # gallery pids by index: 0:A 1:B 2:A 3:C 4:B ; query 0 is A, query 1 is C, query 2 is B
    g = torch.tensor([10, 20, 10, 30, 20])
    q = torch.tensor([10, 30, 20])
    sim = torch.tensor([
        [0.9, 0.8, 0.1, 0.5, 0.4],   # ranking 0(A) 1 3 4 2(A): relevant at ranks 1 and 5
        [0.1, 0.2, 0.3, 0.0, 0.4],   # C (index 3) is ranked last: rank 5
        [0.5, 0.9, 0.4, 0.3, 0.8],   # B at ranks 1 and 2
    ])
    m = retrieval_metrics(sim, q, g, ranks=(1, 2, 5))
    assert m["R1"] == pytest.approx(100 * 2 / 3)
    assert m["R2"] == pytest.approx(100 * 2 / 3)
    assert m["R5"] == pytest.approx(100.0)
    ap = [(1 / 1 + 2 / 5) / 2, 1 / 5, (1 + 1) / 2]
    assert m["mAP"] == pytest.approx(100 * sum(ap) / 3)
    inp = [2 / 5, 1 / 5, 2 / 2]
    assert m["mINP"] == pytest.approx(100 * sum(inp) / 3)
    assert m["queries"] == 3 and m["gallery"] == 5


def test_ties_are_broken_by_gallery_order():
    g = torch.tensor([1, 2, 1])
    sim = torch.tensor([[0.5, 0.5, 0.5]])  # all tied: ranking is 0, 1, 2
    m = retrieval_metrics(sim, torch.tensor([2]), g, ranks=(1, 2))
    assert m["R1"] == 0.0 and m["R2"] == 100.0
    assert m["mAP"] == pytest.approx(50.0) and m["mINP"] == pytest.approx(50.0)
    m = retrieval_metrics(sim, torch.tensor([1]), g, ranks=(1,))
    assert m["mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2)  # relevant at ranks 1 and 3
    assert m["mINP"] == pytest.approx(100 * 2 / 3)


def test_chunking_does_not_change_the_result():
    torch.manual_seed(3)
    sim = torch.randn(37, 23)
    q, g = torch.randint(0, 5, (37,)), torch.arange(23) % 5
    assert retrieval_metrics(sim, q, g, chunk=4) == pytest.approx(retrieval_metrics(sim, q, g, chunk=1000))


def test_queries_without_a_match_are_left_out_and_counted():
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(sim, torch.tensor([1, 9]), torch.tensor([1, 2]))
    assert m["queries"] == 1 and m["queries_without_match"] == 1 and m["R1"] == 100.0
    with pytest.raises(ValueError, match="does not match"):
        retrieval_metrics(sim, torch.tensor([1]), torch.tensor([1, 2]))


# --- the sort-based implementation the metrics had before (kept here as the reference) ---

def _reference_metrics(similarity, query_pids, gallery_pids, ranks=(1, 5, 10)):
    """Full stable sort of every row, cumulative sums: the previous ``retrieval_metrics``."""
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    matches = gallery_pids[order] == query_pids.view(-1, 1)
    num_rel = matches.sum(dim=1)
    keep = num_rel > 0
    m, num_rel = matches[keep].double(), num_rel[keep].double()
    valid = int(keep.sum())
    positions = torch.arange(1, similarity.shape[1] + 1, dtype=torch.float64)
    cum = m.cumsum(dim=1)
    out = {f"R{k}": 100.0 * float((cum[:, min(k, m.shape[1]) - 1] > 0).sum()) / valid for k in ranks}
    out["mAP"] = 100.0 * float(((cum / positions) * m).sum(dim=1).div(num_rel).sum()) / valid
    out["mINP"] = 100.0 * float((num_rel / (m * positions).max(dim=1).values).sum()) / valid
    out["queries"] = valid
    out["gallery"] = int(similarity.shape[1])
    if similarity.shape[0] - valid:
        out["queries_without_match"] = similarity.shape[0] - valid
    first = (m.argmax(dim=1) + 1).long()
    ap = ((cum / positions) * m).sum(dim=1).div(num_rel)
    return out, keep.nonzero().view(-1), first, ap


def _random_case(seed, queries, gallery, ids, levels=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sim = torch.randn(queries, gallery, generator=g, dtype=dtype)
    if levels is not None:  # few distinct values: many ties, inside and across relevant items
        sim = torch.round(sim * levels / 3) / levels
    return sim, torch.randint(0, ids + 2, (queries,), generator=g), torch.randint(0, ids, (gallery,), generator=g)


@pytest.mark.parametrize("seed,levels,dtype", [
    (0, None, torch.float32), (1, 2, torch.float32), (2, 1, torch.float32), (3, 8, torch.float64),
    (4, None, torch.float64), (5, 1, torch.float16), (6, 4, torch.bfloat16),
])
def test_metrics_equal_the_sort_based_reference(seed, levels, dtype):
    from upperson.metrics import per_query_metrics

    sim, q, g = _random_case(seed, 53, 41, ids=9, levels=levels, dtype=dtype)
    expected, kept, first, ap = _reference_metrics(sim, q, g, ranks=(1, 2, 5, 10, 100))
    threads = torch.get_num_threads()
    for chunk, workers in ((1, 1), (7, 2), (1024, 1)):
        torch.set_num_threads(workers)  # blocks of queries run on this many threads
        try:
            per = per_query_metrics(sim, q, g, chunk=chunk)
        finally:
            torch.set_num_threads(threads)
        assert per.aggregate((1, 2, 5, 10, 100)) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert per.query_index.tolist() == kept.tolist()
        assert per.first_rank.tolist() == first.tolist()
        assert per.ap == pytest.approx(ap.numpy(), rel=1e-12)
        assert per.num_relevant.tolist() == [int((g == q[i]).sum()) for i in kept]


def test_metrics_order_signed_zeros_and_extremes_like_the_sort():
    inf = torch.finfo(torch.float32).max  # infinities themselves are refused (test_security_tensors.py)
    sim = torch.tensor([[0.0, -0.0, -inf, -1e-30, 1e-30, inf, 0.0, -0.0, -inf, inf, -inf]])
    g = torch.arange(11) % 4
    for pid in range(4):
        q = torch.tensor([pid])
        assert retrieval_metrics(sim, q, g, ranks=(1, 2, 3)) == pytest.approx(
            _reference_metrics(sim, q, g, ranks=(1, 2, 3))[0], rel=1e-12)


def test_per_query_metrics_count_queries_without_a_match():
    from upperson.metrics import per_query_metrics

    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9]])
    per = per_query_metrics(sim, torch.tensor([1, 9, 1]), torch.tensor([1, 2]))
    assert per.query_index.tolist() == [0, 2] and per.first_rank.tolist() == [1, 2]
    assert per.num_queries == 3 and per.num_without_match == 1
    assert per.ap.dtype == np.float64 and per.first_rank.dtype == np.int64
