import math

import numpy as np
import pytest

from ncf.eval.metrics import hit_rate, mrr, ndcg, pessimistic_rank, recall, summarize


def slow_rank(pos, others, valid):
    """Plain-Python reference: competitors scoring >= the positive rank before it."""
    out = []
    for p, row, ok in zip(pos, others, valid, strict=True):
        out.append(sum(1 for s, v in zip(row, ok, strict=True) if v and (s >= p or math.isnan(s))))
    return np.array(out)


def slow_ndcg(ranks, k):
    return sum((1 / math.log2(r + 2)) if r < k else 0.0 for r in ranks) / len(ranks)


def test_hand_computed_values():
    ranks = np.array([0, 1, 9, 10, 50])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    # 1/log2(2) = 1, 1/log2(3) = 0.6309, 1/log2(11) = 0.2891
    assert ndcg(ranks, 10) == pytest.approx((1 + 0.6309298 + 0.2890648) / 5, rel=1e-6)
    assert recall(ranks, 10) == hit_rate(ranks, 10)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 51) / 5)


def test_ties_never_favour_the_positive():
    pos = np.array([0.5, 0.5])
    others = np.array([[0.5, 0.1, 0.1], [0.1, 0.1, 0.1]])
    assert pessimistic_rank(pos, others).tolist() == [1, 0]
    # a constant scorer puts the positive last
    const = pessimistic_rank(np.zeros(4), np.zeros((4, 99)))
    assert (const == 99).all()
    assert hit_rate(const, 10) == 0.0


def test_nan_scores_count_against_the_positive():
    assert pessimistic_rank(np.array([np.nan]), np.array([[0.0, 1.0]])).tolist() == [2]
    assert pessimistic_rank(np.array([1.0]), np.array([[np.nan, 0.0]])).tolist() == [1]


def test_padding_is_never_a_competitor():
    pos = np.array([0.2])
    others = np.array([[0.9, 0.9, 0.1]])
    valid = np.array([[True, False, True]])
    assert pessimistic_rank(pos, others, valid).tolist() == [1]


def test_against_slow_reference_random():
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 5, 300).astype(float)  # many ties on purpose
    others = rng.integers(0, 5, (300, 40)).astype(float)
    valid = rng.random((300, 40)) > 0.1
    fast = pessimistic_rank(pos, others, valid)
    assert fast.tolist() == slow_rank(pos, others, valid).tolist()
    for k in (1, 5, 10, 20):
        assert ndcg(fast, k) == pytest.approx(slow_ndcg(fast, k))
        assert hit_rate(fast, k) == pytest.approx(sum(r < k for r in fast) / len(fast))


def test_summarize_keys():
    s = summarize(np.array([0, 3]), ks=(5, 10), full=True)
    assert set(s) == {"hr@5", "ndcg@5", "recall@5", "hr@10", "ndcg@10", "recall@10", "mrr"}
    assert set(summarize(np.array([0]))) == {"hr@10", "ndcg@10"}
