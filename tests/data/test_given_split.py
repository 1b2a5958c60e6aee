"""A given split: the adjacency-list reader, train/test (and validation) files, unseen ids
counted, overlap refused, validation carved by seed, the test file read only by evaluation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

import ncf
from ncf.data import readers
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.split import LazyHoldOut
from ncf.errors import ConfigError, DataError

TRAIN = "0 1 2 3\n1 2 3 4 5\n2 0 1\n3 4\n4\n5 1 2 3 4 5 6\n"  # user 4: no item
TEST = "0 4 5\n1 0\n2 9\n7 1\n5 0\n"  # item 9 and user 7 are not in the training file


def write(tmp_path, train=TRAIN, test=TEST):
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "test.txt").write_text(test)
    return tmp_path / "train.txt", tmp_path / "test.txt"


# --- the adjacency reader -----------------------------------------------------------------

def test_adjacency_detected_and_read(tmp_path):
    train, _ = write(tmp_path)
    r = readers.read_file(train)
    pairs = sorted(zip(r.users.tolist(), r.items.tolist(), strict=True))
    assert pairs[:3] == [(0, 1), (0, 2), (0, 3)] and len(pairs) == 16
    assert r.report.layout == "adjacency" and r.report.empty_lists == 1  # "4" alone: a user with no pair
    assert "read as adjacency lists" in r.report.warnings[0]  # detected: said, not silent
    assert r.ratings is None and r.timestamps is None


def test_adjacency_named_when_lines_look_like_a_table(tmp_path):
    p = tmp_path / "same.txt"
    p.write_text("0 1 2\n1 2 3\n\n2 3 4\n")  # every line 3 fields: a table unless named
    table = readers.read_file(p)
    assert table.report.layout == "table"
    assert list(zip(table.users, table.items, strict=True)) == [(0, 1), (1, 2), (2, 3)]
    adj = readers.read_file(p, layout="adjacency")
    assert list(zip(adj.users, adj.items, strict=True)) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4)]
    wide = tmp_path / "wide.txt"
    wide.write_text("0 1 2 3 4 5\n1 2 3 4 5 6\n")  # equal lists: read as a table, and said
    assert "pass --layout adjacency" in readers.read_file(wide).report.warnings[0]
    assert not readers.looks_adjacency("0\t1\t5\n" * 30_000 + "3\t4\t7\n")  # a table, scanned in pieces
    assert readers.looks_adjacency("0\t1\t5\n" * 30_000 + "3\t4\n")
    assert not adj.report.warnings  # named: nothing to say


def test_adjacency_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("0 1 2\n\n1 2 x3 4\n2 1\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: field 3 \(an item\) 'x3' is not an integer id"):
        readers.read_adjacency(p)
    r = readers.read_adjacency(p, on_bad_lines="skip")
    assert r.report.skipped == 1 and r.report.skipped_lines == [3] and r.report.blank_lines == 1
    assert list(zip(r.users, r.items, strict=True)) == [(0, 1), (0, 2), (2, 1)]
    p.write_text("user items\n0 1 2\n")
    with pytest.raises(DataError, match=r"bad\.txt:1: the user 'user' is not an integer id"):
        readers.read_file(p, layout="adjacency")


def test_adjacency_only_users_alone_is_refused(tmp_path):
    p = tmp_path / "alone.txt"
    p.write_text("0\n1\n")
    with pytest.raises(DataError, match="no \\(user, item\\) pair: every line holds a user alone"):
        readers.read_adjacency(p)


# --- the given split ------------------------------------------------------------------------

def test_given_split_counts_unseen_and_keeps_ids(tmp_path, capsys):
    train, test = write(tmp_path)
    ds = ncf.load_dataset(train=train, test=test, layout="adjacency")
    assert (ds.n_users, ds.n_items) == (5, 7)  # users 0,1,2,3,5; items 0..6
    assert ds.train.nnz + len(ds.valid) == 16 and ds.report["split"] == "given"
    assert isinstance(ds.test, LazyHoldOut) and not ds.test.loaded  # not read by loading
    assert len(ds.test) == 4  # (0,4) (0,5) (1,0) (5,0); (2,9) and (7,1) left out
    rep = ds.report["test"]
    assert (rep["pairs_read"], rep["unseen_pairs"], rep["unseen_user_pairs"], rep["unseen_item_pairs"]) == (6, 2, 1, 1)
    assert "2 of 6 test pairs left out of the test holdout" in capsys.readouterr().err
    users = ds.train.user_map.raws(ds.test.users)
    items = ds.train.item_map.raws(ds.test.items)
    assert sorted(zip(users, items, strict=True)) == [(0, 4), (0, 5), (1, 0), (5, 0)]
    cand = ds.test.candidates  # the sampled protocol's: the held-out item first, negatives unseen by the user
    assert cand.shape == (4, 100) and (cand[:, 0] == ds.test.items).all()
    seen = ds.seen(include_valid=True).toarray().astype(bool)
    for row, u in zip(cand, ds.test.users, strict=True):
        negs = row[1:][row[1:] >= 0]
        assert not seen[u, negs].any() and row[0] not in negs


def test_given_split_refuses_overlap_and_empty(tmp_path):
    train, test = write(tmp_path, test="0 1 4\n1 2\n")  # (0,1) and (1,2) are training pairs
    ds = ncf.load_dataset(train=train, test=test)
    with pytest.raises(DataError, match="2 test pairs also appear in the training file"):
        len(ds.test)
    train, test = write(tmp_path, test="9 1\n")
    with pytest.raises(DataError, match="no test pair left to evaluate \\(1 read, 1 with a user or item"):
        len(ncf.load_dataset(train=train, test=test).test)


def test_valid_carved_by_seed_disjoint_from_train(tmp_path):
    rng = np.random.default_rng(1)
    lines = [" ".join(map(str, [u, *rng.choice(50, size=12, replace=False)])) for u in range(30)]
    train, test = write(tmp_path, train="\n".join(lines) + "\n", test="0 999\n")
    kw = {"layout": "adjacency"}  # every line 13 fields: named, not detected
    a = ncf.load_dataset(train=train, test=test, seed=3, valid_ratio=0.25, **kw)
    b = ncf.load_dataset(train=train, test=test, seed=3, valid_ratio=0.25, **kw)
    c = ncf.load_dataset(train=train, test=test, seed=4, valid_ratio=0.25, **kw)
    assert np.array_equal(a.valid.users, b.valid.users) and np.array_equal(a.valid.items, b.valid.items)
    assert np.array_equal(a.valid.candidates, b.valid.candidates)
    assert not np.array_equal(a.valid.items, c.valid.items)
    assert len(a.valid) == 30 * 3 and a.train.nnz == 30 * 9  # round(12 * 0.25) of each user's 12
    assert not a.train.matrix[a.valid.users, a.valid.items].any()  # disjoint from training
    full = a.train.matrix + a.seen(include_valid=True)
    assert full.nnz == 360
    none = ncf.load_dataset(train=train, test=test, valid=False, **kw)
    assert none.valid is None and none.train.nnz == 360


def test_valid_file_and_layout_of_tables(tmp_path):
    (tmp_path / "tr.csv").write_text("user,item,ts\na,x,1\na,y,2\nb,x,1\nb,z,5\nc,y,3\n")
    (tmp_path / "va.csv").write_text("user,item,ts\na,z,3\nd,x,4\n")  # d: not in the training file
    (tmp_path / "te.csv").write_text("user,item,ts\nb,y,9\nc,x,9\nc,q,9\n")  # item q: unseen
    ds = ncf.load_dataset(train=tmp_path / "tr.csv", test=tmp_path / "te.csv", valid=tmp_path / "va.csv",
                          user_col="user", item_col="item", time_col="ts")
    assert ds.report["valid"]["source"] == "file" and ds.report["valid"]["unseen_pairs"] == 1
    assert ds.train.user_map.raws(ds.valid.users) == ["a"] and ds.train.item_map.raws(ds.valid.items) == ["z"]
    assert ds.train.nnz == 5 and len(ds.test) == 2 and ds.report["test"]["unseen_item_pairs"] == 1
    # no validation holdout (what a refit on train + validation loads): the validation file trains too
    merged = load_dataset(DataConfig(source=str(tmp_path / "tr.csv"), test_file=str(tmp_path / "te.csv"),
                                     valid_file=str(tmp_path / "va.csv"), valid=False, user_col="user",
                                     item_col="item"))
    assert merged.valid is None and merged.train.nnz == 7
    assert np.array_equal(merged.test.users, ds.test.users) and np.array_equal(merged.test.items, ds.test.items)


def test_fit_never_reads_the_test_file(tmp_path):
    rng = np.random.default_rng(0)
    tr, te = [], []
    for u in range(40):
        items = rng.choice(30, size=8, replace=False)
        tr.append(" ".join(map(str, [u, *items[:6]])))
        te.append(" ".join(map(str, [u, *items[6:]])))
    train, test = write(tmp_path, "\n".join(tr) + "\n", "\n".join(te) + "\n")
    ds = ncf.load_dataset(train=train, test=test, layout="adjacency")
    test.unlink()  # gone after loading: fitting must not need it
    model = ncf.fit("pop", ds, progress=False)
    assert not ds.test.loaded
    assert ncf.evaluate(model, ds, split="valid")["hr@10"] >= 0
    with pytest.raises(DataError, match=r"the test holdout cannot be read: .*test\.txt: (no such file|file not found)"):
        ncf.evaluate(model, ds)
    test.write_text("\n".join(te) + "\n")
    assert 0 <= ncf.evaluate(model, ds, protocol="full")["hr@10"] <= 1


def test_config_records_absolute_paths_and_checks_options(tmp_path, monkeypatch):
    write(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(source="train.txt", test_file="test.txt")
    assert cfg.split == "given" and cfg.source == str(tmp_path / "train.txt")
    assert cfg.to_dict()["test_file"] == str(tmp_path / "test.txt")
    assert "layout" not in DataConfig(source="ml-100k").to_dict()  # defaults left out: older runs match
    with pytest.raises(ConfigError, match="--split ratio: a given test file"):
        DataConfig(source="train.txt", test_file="test.txt", split="ratio")
    with pytest.raises(ConfigError, match="--valid FILE applies to a given split"):
        DataConfig(source="train.txt", valid_file="test.txt")
    with pytest.raises(ConfigError, match="--valid-ratio must be in"):
        DataConfig(source="train.txt", test_file="test.txt", valid_ratio=0)
    with pytest.raises(ConfigError, match="--layout must be"):
        DataConfig(source="train.txt", layout="graph")
    with pytest.raises(DataError, match="--user-col: --layout adjacency"):
        load_dataset(DataConfig(source="train.txt", layout="adjacency", user_col="0"))


def test_api_forms_and_refusals(tmp_path):
    train, test = write(tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        ncf.load_dataset(str(train), train=train, test=test)
    with pytest.raises(ConfigError, match="train=PATH needs test=PATH"):
        ncf.load_dataset(train=train)
    ds = ncf.load_dataset(train=train, holdout=None)
    assert ds.test is None and ds.valid is None and ds.train.nnz == 16 and ds.report["split"] == "none"
    with pytest.raises(ConfigError, match="holdout takes None"):
        ncf.load_dataset(train=train, test=test, holdout="loo")


def test_from_pandas_given_split_and_no_holdout():
    tr = pd.DataFrame({"u": [1, 1, 1, 2, 2, 2, 3, 3], "i": ["a", "b", "c", "a", "d", "e", "b", "c"]})
    te = pd.DataFrame({"u": [1, 2, 4], "i": ["d", "b", "a"]})  # user 4: unseen
    ds = ncf.from_pandas(tr, user="u", item="i", test=te)
    assert len(ds.test) == 2 and ds.report["test"]["unseen_user_pairs"] == 1
    assert ds.config["split"] == "given"
    va = pd.DataFrame({"u": [1], "i": ["e"]})
    ds = ncf.from_pandas(tr, user="u", item="i", test=te, valid=va)
    assert len(ds.valid) == 1 and ds.train.nnz == 8
    whole = ncf.from_pandas(tr, user="u", item="i", holdout=None)
    assert whole.test is None and whole.valid is None and whole.train.nnz == 8
    model = ncf.fit("pop", whole, progress=False)
    assert len(model.recommend([1], k=2)) == 2


def test_empty_test_holdout_is_refused():
    pairs = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 1, 3, 2]})
    with pytest.raises(DataError, match="no test item can be held out.*holdout=None"):
        ncf.from_pandas(pairs, valid=False, min_train=10**9)


def test_gowalla_given_split(gowalla_dir):
    t0 = time.perf_counter()
    ds = ncf.load_dataset(train=gowalla_dir / "train.txt", test=gowalla_dir / "test.txt", layout="adjacency")
    assert time.perf_counter() - t0 < 60  # about 2 s on an idle machine (generous: shared cores)
    assert (ds.n_users, ds.n_items) == (29_858, 40_981)
    assert ds.report["split_sizes"]["train_file"] == 810_128
    assert ds.train.nnz + len(ds.valid) == 810_128
    assert not ds.test.loaded
    assert len(ds.test) == 217_242 and ds.report["test"]["unseen_pairs"] == 0


def test_no_holdout_on_every_kind_of_source(tmp_path):
    d = tmp_path / "ncf"
    d.mkdir()
    (d / "t.train.rating").write_text("0\t0\n0\t1\n1\t1\n1\t2\n2\t3\n")
    (d / "t.test.rating").write_text("0\t2\n1\t0\n")
    (d / "t.test.negative").write_text("(0,2)\t3\n(1,0)\t3\n")
    ds = load_dataset(DataConfig(source=str(d / "t.train.rating"), split="none"))
    assert ds.test is None and ds.valid is None and ds.train.nnz == 7  # the test file's pairs train too
    (tmp_path / "r.csv").write_text("u,i\n1,a\n1,b\n2,a\n")
    ds = ncf.load_dataset(tmp_path / "r.csv", holdout=None)
    assert ds.test is None and ds.valid is None and ds.train.nnz == 3 and ds.config["valid"] is False
