"""NegativeSampler properties (hypothesis): negatives are never positives, uniform over the
user's non-interacted items (chi-square), fresh every epoch, deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from ncf.data.sampling import Membership, NegativeSampler


@st.composite
def train_matrices(draw, max_users=25, max_items=30):
    """A users x items 0/1 CSR with every user holding at least one interaction; some users
    may have interacted with every item."""
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(2, max_items))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.floats(0.05, 0.95))
    dense = rng.random((n_users, n_items)) < density
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    if draw(st.booleans()):
        dense[0] = True  # a saturated user
    return sp.csr_matrix(dense.astype(np.float32))


def _positives(m):
    return {(u, i) for u in range(m.shape[0]) for i in m.indices[m.indptr[u]:m.indptr[u + 1]]}


@settings(max_examples=60, deadline=None)
@given(m=train_matrices(), n_neg=st.integers(0, 6), seed=st.integers(0, 1000), epoch=st.integers(0, 5),
       dense=st.booleans())
def test_pointwise_epoch_properties(m, n_neg, seed, epoch, dense):
    s = NegativeSampler(m, n_neg=n_neg, seed=seed, dense_limit=(1 << 30) if dense else 0)
    users, items, labels = s.epoch_pointwise(epoch)
    pos = _positives(m)
    saturated = int((np.diff(m.indptr) == m.shape[1]).sum())
    n_sampleable = m.nnz - int(np.diff(m.indptr)[np.diff(m.indptr) == m.shape[1]].sum())
    assert s.n_saturated_users == saturated
    assert len(users) == m.nnz + n_sampleable * n_neg and labels.sum().item() == m.nnz
    ones = labels == 1
    got_pos = sorted(zip(users[ones].tolist(), items[ones].tolist(), strict=True))
    assert got_pos == sorted(pos)  # every interaction exactly once as a positive
    for u, i in zip(users[~ones].tolist(), items[~ones].tolist(), strict=True):
        assert (u, i) not in pos, f"negative ({u}, {i}) is a positive of user {u}"
    # n_neg negatives for every interaction of a user who has something left to sample
    neg_per_user = np.bincount(users[~ones].numpy(), minlength=m.shape[0])
    counts = np.diff(m.indptr)
    assert np.array_equal(neg_per_user, np.where(counts < m.shape[1], counts * n_neg, 0))
    assert s.n_batches(7) == -(-len(users) // 7)


@settings(max_examples=40, deadline=None)
@given(m=train_matrices(), n_neg=st.integers(1, 4), seed=st.integers(0, 1000))
def test_pairwise_triples(m, n_neg, seed):
    s = NegativeSampler(m, n_neg=n_neg, seed=seed)
    users, pos_items, neg_items = s.epoch_pairwise(0)
    pos = _positives(m)
    for u, p, n in zip(users.tolist(), pos_items.tolist(), neg_items.tolist(), strict=True):
        assert (u, p) in pos and (u, n) not in pos
    assert len(users) == s.n_batches(1, pairwise=True)


@pytest.mark.parametrize("dense", [True, False])
def test_negatives_are_uniform_over_non_interacted_items(dense):
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((3, 50)) < np.array([[0.2], [0.6], [0.9]])).astype(np.float32))
    s = NegativeSampler(m, n_neg=300, seed=1, dense_limit=(1 << 30) if dense else 0)
    users, items, labels = s.epoch_pointwise(0)
    for user in range(3):
        allowed = np.setdiff1d(np.arange(50), m[user].indices)
        draws = items[(users == user) & (labels == 0)].numpy()
        assert len(draws) == 300 * m[user].nnz and np.isin(draws, allowed).all()
        counts = np.bincount(draws, minlength=50)[allowed]
        assert chisquare(counts).pvalue > 1e-4, f"user {user}: not uniform over its {len(allowed)} items"


def test_the_chi_square_check_catches_a_biased_sampler():
    """The uniformity test above can fail: a sampler that replaces a rejected draw by the next
    free item (instead of drawing again) is biased, and the same check rejects it."""
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((1, 50)) < 0.6).astype(np.float32))
    allowed = np.setdiff1d(np.arange(50), m[0].indices)
    draws = rng.integers(0, 50, 200 * len(allowed))
    biased = allowed[np.minimum(np.searchsorted(allowed, draws), len(allowed) - 1)]
    counts = np.bincount(biased, minlength=50)[allowed]
    assert chisquare(counts).pvalue < 1e-6


def test_fresh_per_epoch_and_deterministic_per_seed():
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((40, 200)) < 0.1).astype(np.float32))
    a = NegativeSampler(m, n_neg=4, seed=7)
    e0, e1 = a.epoch_pointwise(0), a.epoch_pointwise(1)
    e0_again = NegativeSampler(m, n_neg=4, seed=7).epoch_pointwise(0)
    assert all(torch.equal(x, y) for x, y in zip(e0, e0_again, strict=True))
    assert not torch.equal(e0[1], e1[1])  # a new draw each epoch (and a new shuffle)
    other = NegativeSampler(m, n_neg=4, seed=8).epoch_pointwise(0)
    assert not torch.equal(e0[1], other[1])
    # the negatives themselves are fresh, not just reshuffled: compare the multisets per user
    neg0 = sorted(zip(e0[0][e0[2] == 0].tolist(), e0[1][e0[2] == 0].tolist(), strict=True))
    neg1 = sorted(zip(e1[0][e1[2] == 0].tolist(), e1[1][e1[2] == 0].tolist(), strict=True))
    assert neg0 != neg1
    p0, p0_again = a.epoch_pairwise(3), NegativeSampler(m, n_neg=4, seed=7).epoch_pairwise(3)
    assert all(torch.equal(x, y) for x, y in zip(p0, p0_again, strict=True))


def test_batches_and_shards_cover_the_epoch_once():
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((30, 40)) < 0.2).astype(np.float32))
    s = NegativeSampler(m, n_neg=3, seed=0)
    full = s.epoch_pointwise(2)
    batches = list(s.batches(2, batch_size=64))
    assert len(batches) == s.n_batches(64) and all(len(b[0]) <= 64 for b in batches)
    for k in range(3):
        assert torch.equal(torch.cat([b[k] for b in batches]), full[k])
    shards = [list(s.batches(2, batch_size=64, shard=(r, 3))) for r in range(3)]
    rows = sorted(zip(*(torch.cat([b[k] for sh in shards for b in sh]).tolist() for k in range(3)), strict=True))
    assert rows == sorted(zip(*(t.tolist() for t in full), strict=True))


def test_membership_dense_and_sorted_agree():
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((20, 25)) < 0.3).astype(np.float32))
    users = torch.from_numpy(rng.integers(0, 20, 500))
    items = torch.from_numpy(rng.integers(0, 25, 500))
    truth = torch.from_numpy(m.toarray()[users.numpy(), items.numpy()] > 0)
    assert torch.equal(Membership(m).contains(users, items), truth)
    assert torch.equal(Membership(m, dense_limit=0).contains(users, items), truth)
    empty = sp.csr_matrix((3, 4), dtype=np.float32)
    assert not Membership(empty, dense_limit=0).contains(torch.tensor([0]), torch.tensor([1])).any()


def test_membership_filter_is_exact_and_selective():
    """Behind the sorted keys, the bit filter never hides a positive, and sends only a small
    share of the absent pairs (its false positives) on to the binary search."""
    rng = np.random.default_rng(1)
    m = sp.random(3000, 800, density=0.01, format="csr", random_state=rng, dtype=np.float32)
    member = Membership(m, dense_limit=0)
    assert 8 * m.nnz <= 2 ** member.filter_bits < 16 * m.nnz
    u, i = rng.integers(0, 3000, 200_000), rng.integers(0, 800, 200_000)
    truth = torch.from_numpy(np.asarray(m[u, i]).ravel() > 0)
    users, items = torch.from_numpy(u), torch.from_numpy(i)
    assert torch.equal(member.contains(users, items), truth)
    flagged = member.flagged(users * 800 + items)
    assert flagged[truth].all()  # no false negatives
    false_positive_rate = flagged[~truth].float().mean().item()
    assert 0.02 < false_positive_rate < 0.15  # one hash, 8-16 bits a key: 6-12% expected


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_neg must be >= 0"):
        NegativeSampler(sp.csr_matrix(np.eye(3, dtype=np.float32)), n_neg=-1)


def test_ml1m_epoch_has_no_positive_negatives(ncf_ml1m):
    train = ncf_ml1m.train.matrix
    s = NegativeSampler(train, n_neg=4, seed=0)
    users, items, labels = s.epoch_pointwise(0)
    assert len(users) == train.nnz * 5 and int(labels.sum()) == train.nnz
    neg = labels == 0
    assert not Membership(train).contains(users[neg], items[neg]).any()
