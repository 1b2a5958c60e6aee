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
    fast = full_ranks(TableScorer(table), HoldOut(users, items, items[:, None]), seen, batch_rows=6)
    slow = []
    for u in users:
        pos = table[u, items[u]]
        comp = [j for j in range(n_items) if j != items[u] and j not in set(seen[u].indices)]
        slow.append(sum(1 for j in comp if table[u, j] >= pos))
    assert fast.tolist() == slow


@pytest.mark.parametrize("sort_from", [1, 10**9])  # ranks by sorting each user's scores, or by comparing
def test_full_ranks_with_several_rows_a_user_score_each_user_once_and_match_slow_loop(monkeypatch, sort_from):
    import ncf.eval.evaluator as ev

    monkeypatch.setattr(ev, "SORT_FROM", sort_from)
    rng = np.random.default_rng(7)
    n_users, n_items = 12, 50
    table = rng.integers(0, 6, size=(n_users, n_items)).astype(np.float32)  # many ties
    table[0, :20] = -np.inf  # held-out items scored -inf tie with seen ones, which are no competitors
    seen = sp.random(n_users, n_items, density=0.2, format="csr", random_state=8)
    seen.data[:] = 1
    rows = [(u, i) for u in range(n_users) for i in rng.choice(np.setdiff1d(np.arange(n_items), seen[u].indices),
                                                               size=rng.integers(1, 9), replace=False)]
    rng.shuffle(rows)  # a user's rows scattered through the holdout
    users, items = np.array(rows).T
    calls = []

    class Counting(TableScorer):
        def score_all(self, u):
            calls.extend(u.tolist())
            return super().score_all(u)

    fast = full_ranks(Counting(table), HoldOut(users, items, items[:, None]), seen, batch_rows=10)
    slow = [sum(1 for j in range(n_items) if j != i and j not in set(seen[u].indices) and table[u, j] >= table[u, i])
            for u, i in zip(users, items, strict=True)]
    assert fast.tolist() == slow
    assert sorted(calls) == sorted(set(users.tolist()))  # every user scored once, whatever its rows


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
