"""Interactions (users x items CSR, duplicates collapsed to the latest) and IdMap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncf.data.interactions import IdMap, Interactions, load_idmaps, save_idmaps


def test_orientation_and_maps():
    inter = Interactions.from_raw(np.array([30, 10, 10]), np.array(["b", "a", "c"]))
    assert inter.matrix.shape == (2, 3) == (inter.n_users, inter.n_items)  # users x items
    assert inter.user_map.raw_ids == [10, 30] and inter.item_map.raw_ids == ["a", "b", "c"]
    dense = inter.matrix.toarray()
    assert dense.tolist() == [[1, 0, 1], [0, 1, 0]]
    users, items = inter.coo()
    assert users.tolist() == [0, 0, 1] and items.tolist() == [0, 2, 1]
    assert inter.user_counts().tolist() == [2, 1] and inter.item_counts().tolist() == [1, 1, 1]
    assert inter.density == pytest.approx(3 / 6)


def test_duplicates_collapse_to_latest_and_are_counted():
    users = np.array([1, 1, 1, 2, 1])
    items = np.array([5, 5, 6, 5, 5])
    times = np.array([300, 100, 50, 10, 200])
    ratings = np.array([3.0, 1.0, 4.0, 2.0, 5.0])
    inter = Interactions.from_raw(users, items, timestamps=times, ratings=ratings)
    assert inter.n_duplicates == 2 and inter.nnz == 3
    u, i = inter.coo()
    got = {(inter.user_map.raw(a), inter.item_map.raw(b)): (int(t), float(r))
           for a, b, t, r in zip(u, i, inter.timestamps, inter.ratings, strict=True)}
    assert got == {(1, 5): (300, 3.0), (1, 6): (50, 4.0), (2, 5): (10, 2.0)}  # the latest (1, 5) kept


def test_duplicate_ties_keep_the_later_row():
    inter = Interactions.from_raw(np.array([1, 1]), np.array([5, 5]), timestamps=np.array([7, 7]),
                                  ratings=np.array([1.0, 2.0]))
    assert inter.n_duplicates == 1 and inter.ratings.tolist() == [2.0]
    no_time = Interactions.from_raw(np.array([1, 1, 1]), np.array([5, 5, 5]), ratings=np.array([1.0, 2.0, 3.0]))
    assert no_time.n_duplicates == 2 and no_time.ratings.tolist() == [3.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 5)), min_size=1, max_size=60))
def test_collapse_matches_a_plain_python_reference(rows):
    users, items, times = (np.array(c) for c in zip(*rows, strict=True))
    inter = Interactions.from_raw(users, items, timestamps=times, ratings=np.arange(len(rows), dtype=float))
    latest: dict = {}
    for pos, (u, i, t) in enumerate(rows):
        if (u, i) not in latest or t >= latest[(u, i)][0]:
            latest[(u, i)] = (t, pos)
    assert inter.n_duplicates == len(rows) - len(latest)
    u, i = inter.coo()
    got = {(inter.user_map.raw(a), inter.item_map.raw(b)): (int(t), int(r))
           for a, b, t, r in zip(u, i, inter.timestamps, inter.ratings, strict=True)}
    assert got == latest
    assert inter.matrix.has_sorted_indices and (inter.matrix.data == 1).all()


def test_construction_errors():
    m = IdMap([1, 2])
    with pytest.raises(ValueError, match="user index out of range"):
        Interactions.from_indices(np.array([2]), np.array([0]), m, m)
    with pytest.raises(ValueError, match="differ in length"):
        Interactions.from_indices(np.array([0, 1]), np.array([0]), m, m)
    with pytest.raises(ValueError, match="raw ids must be unique"):
        IdMap([1, 1])


def test_idmap_lookups():
    m = IdMap([7, 12, 40])
    assert m.index(12) == 1 and m.index("12") == 1 and m.index("007") == 0 and m.get(np.int64(40)) == 2
    assert m.get(13) is None and m.raws([2, 0]) == [40, 7]
    with pytest.raises(KeyError, match="unknown user 13"):
        m.index(13, what="user")
    s = IdMap(["u1", "u2"])
    assert s.index("u2") == 1 and s.get("u3") is None


@pytest.mark.parametrize("users,items", [([1, 5, 9], [100, 2]), (["alice", "bob"], ["m 1", "é"]), ([3], ["7", 8])])
def test_idmap_round_trips_to_disk(tmp_path, users, items):
    um, im = IdMap(users), IdMap(items)
    save_idmaps(tmp_path, um, im)
    u2, i2 = load_idmaps(tmp_path)
    assert u2 == um and i2 == im
    assert [type(x) for x in u2.raw_ids] == [type(x) for x in users]  # ints stay ints, strings stay strings
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no temporary left


def test_idmap_from_reader_arrays_round_trip(tmp_path):
    inter = Interactions.from_raw(np.array(["3", "1"]), np.array(["x", "y"]))
    assert inter.user_map.raw_ids == [1, 3]  # integer strings become integer ids
    inter.save_maps(tmp_path)
    assert load_idmaps(tmp_path)[0] == inter.user_map


def test_corrupt_idmap_names_the_file(tmp_path):
    (tmp_path / "idmap.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"idmap\.json: not a valid id map"):
        load_idmaps(tmp_path)
    (tmp_path / "idmap.json").write_text(json.dumps({"users": [1, 1], "items": [2]}))
    with pytest.raises(ValueError, match=r"idmap\.json: not a valid id map \(IdMap: raw ids must be unique"):
        load_idmaps(tmp_path)
    (tmp_path / "idmap.json").write_text(json.dumps({"users": [1]}))
    with pytest.raises(ValueError, match="idmap.json: not a valid id map"):
        load_idmaps(tmp_path)
