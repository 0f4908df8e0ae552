"""Losses against their formulas, metrics against hand-worked cases."""

from __future__ import annotations

import math

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
