import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ncf.data.split import PAD, HoldOut
from ncf.eval.evaluator import evaluate, full_ranks, sampled_ranks


class TableScorer:
    """A Scorer backed by a fixed [n_users, n_items] score table."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.n_users, self.n_items = self.table.shape

    def score(self, users, items):
        return self.table[users, items]

    def score_all(self, users):
        return self.table[users]


def test_constant_scorer_gets_nothing():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 200
    users = np.arange(n_users)
    items = rng.integers(0, n_items, n_users)
    cand = np.concatenate([items[:, None], rng.integers(0, n_items, (n_users, 99))], axis=1)
    model = TableScorer(np.zeros((n_users, n_items)))
    res = evaluate(model, HoldOut(users, items, cand), "sampled")
    assert res["hr@10"] == 0.0 and res["ndcg@10"] == 0.0
    res = evaluate(model, HoldOut(users, items, cand), "full", seen=sp.csr_matrix((n_users, n_items)))
    assert res["hr@10"] == 0.0


def test_sampled_ranks_match_a_slow_loop_and_ignore_padding():
    rng = np.random.default_rng(3)
    n_users, n_items = 30, 60
    table = rng.normal(size=(n_users, n_items))
    users = np.arange(n_users)
    items = rng.integers(0, n_items, n_users)
    cand = np.concatenate([items[:, None], rng.integers(0, n_items, (n_users, 20))], axis=1)
    cand[::3, -5:] = PAD
    fast = sampled_ranks(TableScorer(table), HoldOut(users, items, cand), batch_rows=7)
    slow = []
    for u, row in zip(users, cand, strict=True):
        pos = table[u, row[0]]
        slow.append(sum(1 for c in row[1:] if c != PAD and table[u, c] >= pos))
    assert fast.tolist() == slow


def test_full_ranks_exclude_seen_items_and_match_slow_loop():
    rng = np.random.default_rng(4)
    n_users, n_items = 25, 40
    table = rng.normal(size=(n_users, n_items)).astype(np.float32)
    seen = sp.random(n_users, n_items, density=0.2, format="csr", random_state=5)
    seen.data[:] = 1
    users = np.arange(n_users)
    items = np.array([rng.choice(np.setdiff1d(np.arange(n_items), seen[u].indices)) for u in users])
    fast = full_ranks(TableScorer(table), HoldOut(users, items, items[:, None]), seen, batch_users=6)
    slow = []
    for u in users:
        pos = table[u, items[u]]
        comp = [j for j in range(n_items) if j != items[u] and j not in set(seen[u].indices)]
        slow.append(sum(1 for j in comp if table[u, j] >= pos))
    assert fast.tolist() == slow


def test_perfect_scorer_ranks_first():
    n_users, n_items = 10, 30
    users = np.arange(n_users)
    items = (users * 3) % n_items
    table = np.zeros((n_users, n_items))
    table[users, items] = 1.0
    cand = np.stack([items, (items + 1) % n_items, (items + 2) % n_items], axis=1)
    res = evaluate(TableScorer(table), HoldOut(users, items, cand), "sampled", ks=(1, 10))
    assert res["hr@1"] == 1.0 and res["ndcg@10"] == 1.0


def test_bad_protocol_and_missing_seen():
    h = HoldOut(np.array([0]), np.array([0]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(TableScorer(np.zeros((1, 2))), h, "weird")
    with pytest.raises(ValueError, match="seen"):
        evaluate(TableScorer(np.zeros((1, 2))), h, "full")
