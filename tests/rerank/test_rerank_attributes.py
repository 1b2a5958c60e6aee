"""Attributes CSV: joined by raw id, missing/unknown items reported, malformed files named."""

from __future__ import annotations

import numpy as np
import pytest

from ncf.data.interactions import IdMap
from ncf.data.readers import DataError
from ncf.rerank.attributes import load_attributes, movielens_attributes, write_movielens_attributes

ITEMS = IdMap([10, 20, 30, 40])


def write(tmp_path, text, name="a.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_join_by_raw_id(tmp_path):
    p = write(tmp_path, "item,price,category\n30,3.5,Drama|Comedy\n10,1.25,Comedy\n99,7,Drama\n")
    a = load_attributes(p, ITEMS)
    assert a.numeric["price"].tolist() == [1.25, 0.0, 3.5, 0.0]
    assert a.has.tolist() == [True, False, True, False]
    assert a.missing.tolist() == [1, 3]
    assert a.unknown == ["99"]
    assert a.categories == ["Comedy", "Drama"]
    assert a.category("Drama").tolist() == [0, 0, 1, 0]  # item 99 is unknown: not joined
    assert a.category("Comedy").tolist() == [1, 0, 1, 0]
    rep = a.report(ITEMS)
    assert rep["items_without_attributes"] == 2 and rep["without_attributes_examples"] == [20, 40]
    assert rep["unknown_rows"] == 1 and len(a.sha256) == 64


def test_string_ids_and_named_columns(tmp_path):
    items = IdMap(["a", "b"])
    p = write(tmp_path, "cost,sku,kind\n2,b,x\n1,a,y\n")
    a = load_attributes(p, items, id_col="sku", category_col="kind")
    assert a.numeric["cost"].tolist() == [1.0, 2.0] and a.categories == ["x", "y"]


@pytest.mark.parametrize("text, says", [
    ("item,price\n10,1\n20,cheap\n", ":3: column 'price': 'cheap' is not a finite number"),
    ("item,price\n10,1\n20,\n", ":3: column 'price'"),
    ("item,price\n10,1\n10,2\n", ":3: item '10' appears again (first on line 2)"),
    ("item,price\n,1\n", ":2: empty item id"),
    ("item,price\n", "header only"),
    ("", "empty file"),
    ("item\n10\n", "at least one attribute column"),
])
def test_malformed_files(tmp_path, text, says):
    p = write(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_attributes(p, ITEMS)
    assert str(p) in str(e.value) and says in str(e.value)


def test_missing_file_and_column(tmp_path):
    with pytest.raises(DataError, match="no such attributes file"):
        load_attributes(tmp_path / "nope.csv", ITEMS)
    p = write(tmp_path, "item,price\n10,1\n")
    with pytest.raises(DataError, match="no category column 'genre'"):
        load_attributes(p, ITEMS, category_col="genre")


def test_movielens_attributes_seeded_and_documented_range():
    info = {"genres": [["Drama"], ["Comedy", "Romance"], [], ["Drama"]]}
    a = movielens_attributes(ITEMS, info, seed=3)
    b = movielens_attributes(ITEMS, info, seed=3)
    c = movielens_attributes(ITEMS, info, seed=4)
    assert a.equals(b) and not a.equals(c)
    assert a["category"].tolist() == ["Drama", "Comedy|Romance", "", "Drama"]
    assert ((a["price"] >= 0.99) & (a["price"] <= 9.99)).all()
    assert ((a["margin"] >= 0.1) & (a["margin"] <= 0.6)).all()
    with pytest.raises(ValueError, match="no items.json with genres"):
        movielens_attributes(ITEMS, None)


def test_write_from_run_round_trips(tmp_path):
    from ncf.checkpoint import atomic_write_json
    from ncf.data.interactions import save_idmaps

    run = tmp_path / "run"
    run.mkdir()
    save_idmaps(run, IdMap([1, 2]), ITEMS)
    atomic_write_json(run / "items.json", {"titles": ["a", "b", "c", "d"],
                                           "genres": [["Drama"], ["Comedy"], ["Drama", "War"], []]})
    out = write_movielens_attributes(run, tmp_path / "out" / "attrs.csv", seed=0)
    a = load_attributes(out, ITEMS)
    assert a.has.all() and a.categories == ["Comedy", "Drama", "War"]
    assert np.all(a.numeric["price"] > 0)


def test_write_never_replaces_a_file_without_overwrite(tmp_path):
    from ncf.checkpoint import atomic_write_json
    from ncf.data.interactions import save_idmaps
    from ncf.errors import RunExistsError

    run = tmp_path / "run"
    run.mkdir()
    save_idmaps(run, IdMap([1, 2]), ITEMS)
    atomic_write_json(run / "config.json", {"format": 1, "model": "pop"})
    atomic_write_json(run / "items.json", {"titles": ["a", "b", "c", "d"], "genres": [["Drama"]] * 4})
    mine = tmp_path / "prices.csv"
    mine.write_text("item,price\n1,9.99\n")
    with pytest.raises(RunExistsError, match="--overwrite"):
        write_movielens_attributes(run, mine)
    assert mine.read_text() == "item,price\n1,9.99\n"
    with pytest.raises(RunExistsError, match="run directory"):
        write_movielens_attributes(run, run / "idmap.json", overwrite=True)
    assert load_attributes(write_movielens_attributes(run, mine, overwrite=True), ITEMS).has.all()
