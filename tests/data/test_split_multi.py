"""Splits with several held-out items per user: global temporal and per-user ratio."""

import numpy as np
import pytest

from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.interactions import Interactions
from ncf.data.split import ratio_masks, split_multi, temporal_masks


def _data(n_users=20, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(50, per_user, replace=False) for _ in range(n_users)])
    times = rng.integers(0, 1000, len(users))
    return Interactions.from_raw(users, items, times)


def test_temporal_holds_out_the_latest_interactions():
    d = _data()
    val, test = temporal_masks(d, 0.1, 0.2)
    t = d.timestamps
    assert test.sum() == round(0.2 * d.nnz) and val.sum() == round(0.1 * d.nnz)
    assert t[test].min() >= t[val].max() and t[val].min() >= t[~(val | test)].max()


def test_temporal_needs_timestamps():
    d = Interactions.from_raw(np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="timestamps"):
        temporal_masks(d)


@pytest.mark.parametrize("by_time", [False, True])
def test_ratio_8_1_1_per_user(by_time):
    d = _data()
    val, test = ratio_masks(d, np.random.default_rng(1), (0.8, 0.1, 0.1), by_time=by_time)
    users, _ = d.coo()
    for u in range(d.n_users):
        assert test[users == u].sum() == 1 and val[users == u].sum() == 1  # 10 items: 8:1:1
        if by_time:
            t = d.timestamps[users == u]
            m_t, m_v = test[users == u], val[users == u]
            assert t[m_t].min() >= t[m_v].max() >= t[~(m_t | m_v)].max()
    again = ratio_masks(d, np.random.default_rng(1), (0.8, 0.1, 0.1), by_time=by_time)
    assert all(np.array_equal(a, b) for a, b in zip((val, test), again, strict=True))


def test_ratio_time_draws_equal_times_at_random():
    """A user whose interactions share one timestamp: the test and validation items are drawn at
    random (seeded), not the largest item indexes."""
    users = np.repeat(np.arange(300), 3)
    items = np.tile([0, 1, 2], 300)
    d = Interactions.from_raw(users, items, np.zeros(len(users), dtype=np.int64))
    val, test = ratio_masks(d, np.random.default_rng(3), (0.8, 0.1, 0.1), by_time=True)
    _, it = d.coo()
    assert test.sum() == val.sum() == 300
    counts = np.bincount(it[test], minlength=3)
    assert counts.min() > 60, counts  # 300 draws of 3: about 100 each (the old rule: all item 2)


def test_ratio_keeps_a_training_item_and_skips_tiny_users():
    d = Interactions.from_raw(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 2]), np.arange(5))
    val, test = ratio_masks(d, np.random.default_rng(0), (0.8, 0.1, 0.1), by_time=True)
    users, _ = d.coo()
    assert not (val | test)[users == 0].any()  # 2 items: all train
    assert test[users == 1].sum() == 1 and val[users == 1].sum() == 1


def test_split_multi_rows_and_report():
    d = _data()
    train, (vu, vi), (tu, ti), rep = split_multi(d, "ratio", np.random.default_rng(0))
    assert train.nnz + len(vu) + len(tu) == d.nnz
    assert not train.matrix[tu, ti].any() and not train.matrix[vu, vi].any()
    assert rep["split"] == "ratio" and rep["test_users"] == d.n_users


def test_loo_stays_the_default_and_other_splits_load(ml100k_dir):
    assert DataConfig().split == "loo" and "split" not in DataConfig().to_dict()
    ds = load_dataset(DataConfig(source="ml-100k", split="ratio-time"))
    assert ds.report["split"] == "ratio-time"
    assert len(ds.test) > ds.report["test_users"]  # several test items a user
    assert ds.test.candidates.shape[1] == 100
    with pytest.raises(ValueError, match="split"):
        DataConfig(split="random")


@pytest.mark.parametrize("split", ["temporal", "ratio", "ratio-time"])
def test_the_test_holdout_is_the_same_without_validation(ml100k_dir, split):
    """The validation rows are carved either way; without a validation holdout they go back into
    training, and the test rows and their sampled candidates stay what the validated load has."""
    a = load_dataset(DataConfig(source="ml-100k", split=split))
    b = load_dataset(DataConfig(source="ml-100k", split=split, valid=False))
    assert b.valid is None and len(a.valid)
    assert np.array_equal(a.test.users, b.test.users) and np.array_equal(a.test.candidates, b.test.candidates)
    have, want = b.train.matrix.astype(bool), a.seen(True).astype(bool)
    assert (want > have).nnz == 0 and b.train.nnz >= a.train.nnz + len(a.valid)
    assert (b.train.matrix.tocsr()[b.test.users, b.test.items] == 0).all()
