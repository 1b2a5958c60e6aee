"""Leave-one-out splits, validation holdouts, candidates, and datasets built from them."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from ncf.data import readers
from ncf.data.datasets import DataConfig, data_dir, load_dataset
from ncf.data.interactions import Interactions
from ncf.data.readers import DataError
from ncf.data.split import PAD, candidates_from_lists, leave_one_out, sample_candidates


def _inter(rows, with_time=True):
    u, i, t = (np.array(c) for c in zip(*rows, strict=True))
    return Interactions.from_raw(u, i, timestamps=t if with_time else None)


def _pairs(inter, users, items):
    return {(inter.user_map.raw(u), inter.item_map.raw(i)) for u, i in zip(users, items, strict=True)}


def test_leave_one_out_holds_out_the_latest():
    full = _inter([(1, 10, 5), (1, 11, 9), (1, 12, 7), (2, 10, 1), (2, 13, 2)])
    train, users, items, few = leave_one_out(full, np.random.default_rng(0))
    assert _pairs(full, users, items) == {(1, 11), (2, 13)} and few == 0
    assert train.nnz == 3 and train.matrix[users, items].sum() == 0  # held-out items left training
    assert train.timestamps.tolist() == [5, 7, 1]  # timestamps stay aligned


def test_ties_are_drawn_at_random_not_by_id():
    """Among interactions sharing a user's latest timestamp the held-out one is drawn at random,
    seeded (sequential or per-user draws): every tied item comes up, none by its id, the same
    seed draws the same whatever the file order, and the earlier interaction is never drawn."""
    from collections import Counter

    from ncf.data.split import TEST_PICK, UserDraws

    rows = [(u, i, 9) for u in range(1, 301) for i in (10, 20, 30)] + [(u, 40, 1) for u in range(1, 301)]
    full = _inter(rows)
    for draws in (lambda seed: np.random.default_rng(seed), lambda seed: UserDraws(seed, TEST_PICK)):
        _, users, items, _ = leave_one_out(full, draws(1))
        picked = Counter(i for _, i in _pairs(full, users, items))
        assert set(picked) == {10, 20, 30} and min(picked.values()) > 60, picked  # 300 draws of 3: ~100 each
        again = leave_one_out(_inter(rows[::-1]), draws(1))
        assert np.array_equal(again[2], items)  # the seed, not the file order, decides
        assert not np.array_equal(leave_one_out(full, draws(2))[2], items)


def test_validation_is_the_next_latest_and_disjoint():
    full = _inter([(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4)])
    rng = np.random.default_rng(0)
    train, tu, ti, _ = leave_one_out(full, rng)
    train, vu, vi, _ = leave_one_out(train, rng)
    assert _pairs(full, tu, ti) == {(1, 13)} and _pairs(full, vu, vi) == {(1, 12)}
    assert train.nnz == 2


def test_users_with_too_few_interactions_stay_in_training_and_are_counted():
    full = _inter([(1, 10, 1), (2, 10, 1), (2, 11, 2), (3, 10, 1), (3, 11, 2), (3, 12, 3)])
    rng = np.random.default_rng(0)
    train, tu, _, few_test = leave_one_out(full, rng)
    assert few_test == 1 and sorted(full.user_map.raws(tu)) == [2, 3]
    assert train.user_counts()[full.user_map.index(1)] == 1  # user 1 kept its only interaction
    train2, vu, _, few_valid = leave_one_out(train, rng)
    assert few_valid == 2 and full.user_map.raws(vu) == [3]  # user 2 has one left: no validation item
    _, tu3, _, few3 = leave_one_out(full, rng, min_train=2)
    assert few3 == 2 and full.user_map.raws(tu3) == [3]


def test_without_timestamps_the_holdout_is_random_and_seeded():
    rows = [(u, i, 0) for u in range(50) for i in range(8)]
    full = _inter(rows, with_time=False)
    draws = [leave_one_out(full, np.random.default_rng(s))[2] for s in (0, 0, 1)]
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    assert len(set(draws[0].tolist())) > 4  # not always the same position in the row
    counts = np.bincount(np.concatenate([leave_one_out(full, np.random.default_rng(s))[2] for s in range(40)]),
                         minlength=8)
    assert counts.min() > 0.6 * counts.mean()  # every position is drawn, roughly evenly (2000 draws)


# --- Candidates ------------------------------------------------------------------------------


def _random_seen(rng, n_users, n_items, density):
    m = sp.random(n_users, n_items, density=density, format="csr", random_state=rng)
    m.data[:] = 1
    return m


def test_sample_candidates_distinct_unseen_seeded():
    rng = np.random.default_rng(0)
    seen = _random_seen(rng, 200, 300, 0.3)
    users = np.arange(200)
    items = np.array([row.indices[0] if row.nnz else 0 for row in seen])
    seen = (seen + sp.csr_matrix((np.ones(200), (users, items)), shape=seen.shape)).tocsr()
    seen.data[:] = 1
    cand = sample_candidates(seen, users, items, 99, np.random.default_rng(5))
    assert cand.shape == (200, 100) and np.array_equal(cand[:, 0], items)
    for u in users:
        negs = cand[u, 1:]
        assert len(set(negs.tolist())) == 99 and PAD not in negs  # without replacement
        assert not np.isin(negs, seen[u].indices).any()  # never an item the user saw (nor the positive)
    assert np.array_equal(cand, sample_candidates(seen, users, items, 99, np.random.default_rng(5)))
    assert not np.array_equal(cand, sample_candidates(seen, users, items, 99, np.random.default_rng(6)))


def test_sample_candidates_when_few_items_are_left():
    seen = sp.csr_matrix(np.array([[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]))
    cand = sample_candidates(seen, np.array([0, 1, 2]), np.array([0, 0, 0]), 4, np.random.default_rng(0))
    assert sorted(cand[0, 1:3].tolist()) == [3, 4] and (cand[0, 3:] == PAD).all()
    assert (cand[1, 1:] == PAD).all()  # saw everything: no negatives
    assert sorted(cand[2, 1:].tolist()) != [] and len(set(cand[2, 1:].tolist())) == 4 and 0 not in cand[2, 1:]


def test_sample_candidates_are_uniform():
    from scipy.stats import chisquare

    seen = sp.csr_matrix(np.tile([1] * 5 + [0] * 15, (600, 1)))  # 600 users who saw items 0-4 of 20
    c = sample_candidates(seen, np.arange(600), np.zeros(600, dtype=np.int64), 3, np.random.default_rng(0))
    counts = np.bincount(c[:, 1:].ravel(), minlength=20)
    assert counts[:5].sum() == 0 and counts.sum() == 1800
    assert chisquare(counts[5:]).pvalue > 1e-3
    # the same test rejects a sampler that favours low item indexes
    biased = np.bincount(np.minimum(c[:, 1:].ravel(), c[::-1, 1:].ravel()), minlength=20)
    assert chisquare(biased[5:]).pvalue < 1e-6


def _reference_lists(items, negatives, seen_rows):
    """Plain Python: drop the positive, repeats (first kept) and seen items, keep order."""
    out = []
    for item, negs, seen in zip(items, negatives, seen_rows, strict=True):
        kept = []
        for n in negs:
            if n != PAD and n != item and n not in kept and n not in seen:
                kept.append(n)
        out.append(kept)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.lists(st.integers(0, 9), max_size=12),
                          st.lists(st.integers(0, 9), max_size=4)), min_size=1, max_size=20))
def test_candidates_from_lists_matches_reference(rows):
    items = np.array([r[0] for r in rows])
    users = np.arange(len(rows))
    seen_rows = [set(r[2]) for r in rows]
    seen = sp.csr_matrix((np.ones(sum(len(s) for s in seen_rows)),
                          ([u for u, s in enumerate(seen_rows) for _ in s], [i for s in seen_rows for i in s])),
                         shape=(len(rows), 10))
    cand, stats = candidates_from_lists(users, items, [r[1] for r in rows], 10, seen=seen)
    ref = _reference_lists(items, [r[1] for r in rows], seen_rows)
    assert np.array_equal(cand[:, 0], items)
    for r, kept in enumerate(ref):
        row = cand[r, 1:]
        assert row[: len(kept)].tolist() == kept and (row[len(kept):] == PAD).all()
    assert stats["rows_with_positive_in_negatives"] == sum(r[0] in r[1] for r in rows)


def test_candidates_from_lists_out_of_range():
    with pytest.raises(ValueError, match=r"candidate row 1 \(user 7\): negative item index out of range 0..4"):
        candidates_from_lists(np.array([3, 7]), np.array([0, 0]), [[1], [5]], 5)


# --- Datasets on the real data -----------------------------------------------------------------


def _check_holdout_disjoint(ds):
    for h in (ds.test, ds.valid):
        assert ds.train.matrix[h.users, h.items].sum() == 0  # held out items are not in training
        negs = h.candidates[:, 1:]
        assert not (negs == h.items[:, None]).any()


def test_ml100k_dataset(ml100k):
    ds = ml100k
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100_000)
    assert len(ds.test) == len(ds.valid) == 943 and ds.train.nnz == 100_000 - 2 * 943
    assert ds.test.candidates.shape == (943, 100) and (ds.test.candidates != PAD).all()
    _check_holdout_disjoint(ds)
    # test is each user's latest interaction (ties: one at random), valid the next latest
    r = readers.read_ml100k(data_dir() / "ml-100k" / "u.data")
    full = Interactions.from_raw(r.users, r.items, r.timestamps)
    t = full.timestamps
    for k in range(0, 943, 97):
        u = ds.test.users[k]
        row = slice(full.matrix.indptr[u], full.matrix.indptr[u + 1])
        latest = t[row].max()
        assert ds.test.items[k] in full.matrix.indices[row][t[row] == latest]
    # 415 users rated several films in their last second: the held-out one is not the highest id
    # (it always was under the old rule, a harder, less popular film than a random tied one)
    tied_max = []
    for k, u in enumerate(ds.test.users):
        row = slice(full.matrix.indptr[u], full.matrix.indptr[u + 1])
        tied = full.matrix.indices[row][t[row] == t[row].max()]
        if len(tied) > 1:
            tied_max.append(ds.test.items[k] == tied.max())
    assert len(tied_max) == 415 and 0.15 < np.mean(tied_max) < 0.5
    # seen() covers train and valid, not test
    seen = ds.seen()
    assert seen[ds.valid.users, ds.valid.items].min() == 1 and seen[ds.test.users, ds.test.items].max() == 0
    assert ds.item_info["titles"][ds.train.item_map.index(1)] == "Toy Story (1995)"


def test_ml100k_is_deterministic_per_seed(ml100k_dir):  # the fixture: skip (never download) where absent
    a = load_dataset(DataConfig(source="ml-100k", seed=3))
    b = load_dataset(DataConfig(source="ml-100k", seed=3))
    assert np.array_equal(a.test.candidates, b.test.candidates)
    c = load_dataset(DataConfig(source="ml-100k", seed=4, valid=False, n_neg_eval=50))
    assert c.valid is None and c.test.candidates.shape == (943, 51)
    same = c.test.items == a.test.items  # by time: the seed draws only among same-second ties (415 users)
    assert same.sum() >= 943 - 415 and not same.all()
    assert not np.array_equal(c.test.candidates[:, 1:51], a.test.candidates[:, 1:51])
    # the test holdout does not depend on whether a validation holdout is carved (a --no-valid run,
    # ncf tune's refit on train + validation): same items and sampled candidates
    d = load_dataset(DataConfig(source="ml-100k", seed=3, valid=False))
    assert d.valid is None and np.array_equal(d.test.candidates, a.test.candidates)
    assert (d.train.matrix.astype(bool) != a.seen(True).astype(bool)).nnz == 0


def test_ncf_ml1m_dataset(ncf_ml1m, ncf_ml1m_dir):
    ds = ncf_ml1m
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6040, 3706, 1_000_209)
    assert ds.report["split_sizes"] == {"train": 994_169, "test": 6040, "candidate_lists": 6040}
    assert ds.train.nnz + len(ds.valid) == 994_169 and len(ds.test) == 6040
    assert ds.report["candidates"] == {"rows_with_positive_in_negatives": 156, "duplicate_negatives": 0,
                                       "seen_negatives": 0}
    _check_holdout_disjoint(ds)
    # candidates: the file's negatives, minus the positive where the file lists it
    users, items, negs = readers.read_ncf_negative(ncf_ml1m_dir / "ml-1m.test.negative")
    assert np.array_equal(ds.test.users, users) and np.array_equal(ds.test.items, items)
    has_pos = (negs == items[:, None]).any(axis=1)
    assert ((ds.test.candidates[:, 1:] != PAD).sum(axis=1) == np.where(has_pos, 98, 99)).all()
    assert all(len(set(row[row != PAD].tolist())) == (row != PAD).sum() for row in ds.test.candidates[:, 1:])
    # raw ids are MovieLens ids: items via item_ids.tsv, users as index + 1
    assert ds.train.item_map.raw(0) == 1193 and ds.train.user_map.raw(0) == 1
    assert ds.report["timestamps"] is False and ds.report["users_without_valid"] == 0


# --- Sources, data directory, offline errors ---------------------------------------------------------


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NCF_DATA_DIR", str(tmp_path / "env"))
    assert data_dir(tmp_path / "x") == tmp_path / "x" and data_dir() == tmp_path / "env"
    monkeypatch.delenv("NCF_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir() == tmp_path / ".cache" / "ncf"


def test_file_source_with_columns_and_random_holdout(tmp_path):
    p = tmp_path / "plays.csv"
    p.write_text("who,what\n" + "".join(f"u{u},i{(u * 7 + k) % 30}\n" for u in range(20) for k in range(6)))
    ds = load_dataset(DataConfig(source=str(p), user_col="who", item_col="what", n_neg_eval=10))
    assert (ds.n_users, ds.n_interactions) == (20, 120) and ds.report["timestamps"] is False
    assert ds.train.user_map.raw(0) == "u0" and ds.test.candidates.shape == (20, 11)
    _check_holdout_disjoint(ds)


def test_min_rating_and_bad_lines_reach_the_report(tmp_path):
    p = tmp_path / "r.tsv"
    p.write_text("".join(f"{u}\t{i}\t{1 + (u + i) % 5}\t{i}\n" for u in range(10) for i in range(8)) + "3\tx\n")
    with pytest.raises(DataError, match=r"r\.tsv:81: field 'rating'"):
        load_dataset(DataConfig(source=str(p), rating_col="2", time_col="3"))
    ds = load_dataset(DataConfig(source=str(p), rating_col="2", time_col="3", on_bad_lines="skip", min_rating=3))
    assert ds.report["read"]["skipped"] == 1 and ds.report["read"]["below_min_rating"] == 32
    assert ds.n_interactions == 48


def test_named_dataset_offline_says_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NCF_DOWNLOAD_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(source="ml-1m", data_dir=str(tmp_path)))
    msg = str(e.value)
    assert "could not be downloaded" in msg and "cannot connect" in msg
    target = tmp_path / "ml-1m" / "ratings.dat"
    assert f"put ratings.dat (from http://127.0.0.1:9/ml-1m.zip, unpacked) at {target}" in msg
    assert not any(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(DataError, match=r"ml-1m\.train\.rating, ml-1m\.test\.rating, ml-1m\.test\.negative there"):
        load_dataset(DataConfig(source="ncf-ml-1m", data_dir=str(tmp_path)))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"source": "no-such-thing"}, "not a dataset name .* nor an existing file"),
        ({"source": "ml-100k", "user_col": "2"}, "--user-col: column options apply to a file path"),
        ({"source": "ncf-ml-1m", "min_rating": 4.0}, "pre-split .* has no ratings"),
    ],
)
def test_source_errors(cfg, message, ncf_ml1m_dir):
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(**cfg))


def test_config_errors():
    with pytest.raises(ValueError, match="--on-bad-lines must be 'error' or 'skip', not 'drop'"):
        DataConfig(on_bad_lines="drop")
    with pytest.raises(ValueError, match="n_neg_eval must be >= 1"):
        DataConfig(n_neg_eval=0)


def test_ncf_folder_checks(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "t.train.rating").write_text("0\t0\n0\t1\n1\t1\n1\t2\n2\t3\n")
    (d / "t.test.rating").write_text("0\t2\t5\t9\n1\t0\t4\t9\n")
    (d / "t.test.negative").write_text("(0,2)\t2\t2\t3\n(1,0)\t2\t3\n")
    ds = load_dataset(DataConfig(source=str(d / "t.train.rating"), valid=False))
    assert ds.n_interactions == 7 and ds.report["candidates"]["rows_with_positive_in_negatives"] == 1
    assert ds.report["candidates"]["seen_negatives"] == 1
    assert ds.test.candidates.tolist() == [[2, 3, PAD, PAD], [0, 3, PAD, PAD]]
    # lists left with no negative at all: the sampled protocol would score every row a hit (HR@10 = 1)
    (d / "t.test.negative").write_text("(0,2)\t2\t2\n(1,0)\t2\n")
    with pytest.raises(DataError, match="no candidate list holds a negative item"):
        load_dataset(DataConfig(source=str(d / "t.train.rating"), valid=False))
    (d / "t.test.negative").write_text("(0,2)\n(1,0)\n")  # empty lists as written
    with pytest.raises(DataError, match="no candidate list holds a negative item"):
        load_dataset(DataConfig(source=str(d / "t.train.rating"), valid=False))
    (d / "t.test.negative").write_text("(0,1)\t2\n(1,0)\t2\n")
    with pytest.raises(DataError, match=r"t\.test\.negative: its \(user,item\) heads do not match t\.test\.rating"):
        load_dataset(DataConfig(source=str(d), valid=False))
    (d / "t.test.negative").write_text("(0,2)\t2\n(1,1)\t2\n")
    (d / "t.test.rating").write_text("0\t2\t5\t9\n1\t1\t4\t9\n")
    with pytest.raises(DataError, match="1 test interactions also appear in the training file"):
        load_dataset(DataConfig(source=str(d), valid=False))
