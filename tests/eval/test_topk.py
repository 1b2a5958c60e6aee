"""Top-k metrics with several positives: hand-computed values and slow references."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ncf.data.split import HoldOut
from ncf.eval import topk as T

# user 0: hits at ranks 1 and 3 of 4, 3 relevant items; user 1: one hit at rank 2, 1 relevant
HITS = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
NREL = np.array([3, 1])


def test_hand_computed_values():
    assert T.precision_at_k(HITS, NREL) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert T.recall_at_k(HITS, NREL) == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert T.hit_rate_at_k(HITS, NREL) == 1.0
    assert T.mrr_at_k(HITS, NREL) == pytest.approx((1 / 1 + 1 / 2) / 2)
    # AP@4: user 0 (1/1 + 2/3) / min(3, 4); user 1 (1/2) / 1
    assert T.map_at_k(HITS, NREL) == pytest.approx(((1 + 2 / 3) / 3 + 0.5) / 2)
    dcg0 = 1 / math.log2(2) + 1 / math.log2(4)
    idcg0 = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert T.ndcg_at_k(HITS, NREL) == pytest.approx((dcg0 / idcg0 + (1 / math.log2(3)) / 1) / 2)
    assert T.coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)


def test_one_positive_reduces_to_hr_and_ndcg_of_a_rank():
    hits = np.zeros((1, 10), dtype=bool)
    hits[0, 3] = True
    assert T.ndcg_at_k(hits, [1]) == pytest.approx(1 / math.log2(5))
    assert T.recall_at_k(hits, [1]) == T.hit_rate_at_k(hits, [1]) == 1.0
    assert T.map_at_k(hits, [1]) == pytest.approx(T.mrr_at_k(hits, [1])) == pytest.approx(0.25)


def _slow(hits, nrel):
    """Plain-Python reference of every metric."""
    out = {"p": [], "r": [], "map": [], "mrr": [], "ndcg": []}
    for row, n in zip(hits.tolist(), nrel.tolist(), strict=True):
        k = len(row)
        out["p"].append(sum(row) / k)
        out["r"].append(sum(row) / n)
        ap, h = 0.0, 0
        for i, x in enumerate(row, 1):
            if x:
                h += 1
                ap += h / i
        out["map"].append(ap / min(n, k))
        out["mrr"].append(next((1 / i for i, x in enumerate(row, 1) if x), 0.0))
        dcg = sum(1 / math.log2(i + 1) for i, x in enumerate(row, 1) if x)
        out["ndcg"].append(dcg / sum(1 / math.log2(i + 1) for i in range(1, min(n, k) + 1)))
    return {m: sum(v) / len(v) for m, v in out.items()}


def test_against_slow_reference():
    rng = np.random.default_rng(3)
    hits = rng.random((200, 7)) < 0.3
    nrel = np.maximum(hits.sum(1), 1) + rng.integers(0, 4, 200)
    ref = _slow(hits, nrel)
    assert T.precision_at_k(hits, nrel) == pytest.approx(ref["p"])
    assert T.recall_at_k(hits, nrel) == pytest.approx(ref["r"])
    assert T.map_at_k(hits, nrel) == pytest.approx(ref["map"])
    assert T.mrr_at_k(hits, nrel) == pytest.approx(ref["mrr"])
    assert T.ndcg_at_k(hits, nrel) == pytest.approx(ref["ndcg"])


def test_bad_input():
    with pytest.raises(ValueError):
        T.recall_at_k(HITS, [1])
    with pytest.raises(ValueError):
        T.recall_at_k(HITS, [0, 1])


class Fixed:
    """A scorer with a fixed score matrix."""

    def __init__(self, s):
        self.s = torch.as_tensor(s, dtype=torch.float32)
        self.n_users, self.n_items = self.s.shape

    def score_all(self, users):
        return self.s[users]


def test_evaluate_topk_excludes_seen_and_breaks_ties_by_index():
    scores = np.array([[5, 4, 4, 3, 0], [1, 1, 1, 1, 1]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32))
    lists = T.top_k_lists(Fixed(scores), np.array([0, 1]), seen, 2)
    assert lists.tolist() == [[1, 2], [0, 1]]
    # user 0 holds out items 2 and 4, user 1 item 1
    ho = HoldOut(np.array([0, 0, 1]), np.array([2, 4, 1]), np.zeros((3, 1), dtype=np.int64))
    r = T.evaluate_topk(Fixed(scores), ho, seen, k=2)
    assert r["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert r["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert r["mrr@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert r["coverage@2"] == pytest.approx(3 / 5)
