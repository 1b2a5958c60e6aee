"""Negative sampling partitioned by user: the ranks' epochs together are one process's epoch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ncf.data.partition import UserShardSampler, user_bounds
from ncf.data.sampling import NegativeSampler


def _matrix(n_users=50, n_items=30, seed=0, saturated=()):
    rng = np.random.default_rng(seed)
    rows = [rng.choice(n_items, rng.integers(1, 12), replace=False) for _ in range(n_users)]
    for u in saturated:  # users who saw every item: no negatives
        rows[u] = np.arange(n_items)
    r = np.repeat(np.arange(n_users), [len(x) for x in rows])
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, np.concatenate(rows))), shape=(n_users, n_items))


def _triples(users, items, labels):
    return sorted(zip(users.tolist(), items.tolist(), labels.tolist(), strict=True))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("saturated", [(), (0, 7, 49)])
def test_union_of_rank_epochs_is_one_process_epoch(world, saturated):
    m = _matrix(saturated=saturated)
    whole = NegativeSampler(m, n_neg=3, seed=5)
    bounds = user_bounds(np.diff(m.indptr), world)
    assert bounds[0] == 0 and bounds[-1] == m.shape[0] and np.all(np.diff(bounds) >= 0)
    for epoch in (1, 2):
        parts = []
        for r in range(world):
            s = UserShardSampler.for_rank(m, bounds, r, n_neg=3, seed=5)
            assert s.membership.n_users == bounds[r + 1] - bounds[r]  # only its rows
            p = s.plan(epoch)
            u, i, y = p.batch(0, len(p))
            assert u.min() >= bounds[r] and u.max() < bounds[r + 1]
            parts.append((u, i, y))
        u, i, y = (np.concatenate([p[k].numpy() for p in parts]) for k in range(3))
        ref = whole.epoch_pointwise(epoch)
        assert _triples(u, i, y) == _triples(*(t.numpy() for t in ref))
        neg = y == 0
        assert not np.asarray(m[u[neg], i[neg]]).ravel().any()  # negatives are never positives


def test_bounds_balance_interactions():
    counts = np.array([10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    b = user_bounds(counts, 2)
    cum = np.concatenate([[0], np.cumsum(counts)])
    assert b.tolist()[0] == 0 and b[-1] == len(counts)
    assert abs((cum[b[1]] - cum[b[0]]) - (cum[b[2]] - cum[b[1]])) <= 10
    with pytest.raises(ValueError, match="world must be >= 1"):
        user_bounds(counts, 0)
