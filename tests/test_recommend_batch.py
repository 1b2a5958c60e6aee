"""Batch recommendation at matrix speed: the row-wise top-k, the blockwise recommend path against
the one-user slate, the arrays-to-DataFrame step, and ``ncf recommend --users FILE --out FILE``."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import ncf
from ncf.cli import main
from ncf.data.interactions import IdMap
from ncf.errors import ConfigError, DataError, RunExistsError
from ncf.models.base import Model
from ncf.recommend import Recommender, csr_row_entries, read_user_file, top_k, top_k_rows


class Fixed(Model):
    """A model with a fixed score matrix (ties, NaN and infinities wherever a test puts them);
    ``score_all`` of every user returns a view of it, which the recommend path must not write to."""

    name = "fixed"

    def __init__(self, scores):
        super().__init__(*np.shape(scores))
        self.register_buffer("s", torch.as_tensor(np.asarray(scores, dtype=np.float32)))

    def score_all(self, users):
        if len(users) == self.n_users and bool((users == torch.arange(self.n_users)).all()):
            return self.s[:]
        return self.s[users]


def _ref_rows(scores: np.ndarray, k: int):
    """Plain reference of top_k_rows: a stable descending sort of each row (NaN first, as torch)."""
    key = np.where(np.isnan(scores), np.inf, scores)
    order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    return order


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tied_chunk", [1 << 24, 100])  # 100: tied rows redone two at a time
def test_top_k_rows_breaks_ties_by_lower_index_and_pads_with_minus_inf(seed, tied_chunk, monkeypatch):
    monkeypatch.setattr("ncf.recommend.TIED_CHUNK", tied_chunk)
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (64, 50)).astype(np.float32)  # ties straddle almost every cut-off
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    scores[5, 3:] = -np.inf  # fewer finite scores than k: padded with -inf, lowest index first
    for k in (1, 5, 17, 50, 80):
        val, idx = top_k_rows(torch.from_numpy(scores), k)
        want = _ref_rows(scores, k)
        assert np.array_equal(idx.numpy(), want), k
        assert np.array_equal(val.numpy(), np.take_along_axis(scores, want, 1))
    for row in scores[:8]:  # the one-row top_k agrees on the finite part
        assert top_k(row, None, 7).tolist() == [i for i in _ref_rows(row[None], 7)[0] if np.isfinite(row[i])]


def test_csr_row_entries_any_order_with_repeats():
    m = sp.random(20, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)
    rows = np.array([7, 0, 7, 19, 3])
    pos, cols = csr_row_entries(m, rows)
    dense = np.zeros((len(rows), 30), dtype=bool)
    dense[pos, cols] = True
    assert np.array_equal(dense, m[rows].toarray() != 0)
    assert len(pos) == m[rows].nnz


def _recommender(seed: int = 0, n_users: int = 30, n_items: int = 25) -> Recommender:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, (n_users, n_items)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = np.nan
    scores[rng.random(scores.shape) < 0.05] = np.inf
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    seen = rng.random((n_users, n_items)) < 0.3
    seen[3] = True  # a user who has seen everything: an empty slate
    seen = sp.csr_matrix(seen.astype(np.float32))
    return Recommender(Fixed(scores), IdMap([f"u{i}" for i in range(n_users)]),
                       IdMap([100 + i for i in range(n_items)]), seen)


def _one_by_one(rec: Recommender, users, k, filter_seen=True, extra_seen=None, items=None, rerank=False):
    """The reference: each user alone through the one-user slate (a per-user mask and top_k)."""
    base = np.zeros(rec.n_items, dtype=bool) if items is None else ~rec.candidates_mask(items)
    out = []
    for n, u in enumerate(users):
        i = rec.user_map.get(u)
        exclude = base | rec.items_mask(extra_seen[n] if extra_seen is not None else None)
        if i is None:
            out.append((u, rec.popular(k, exclude), True))
            continue
        if filter_seen:
            exclude[rec.seen_items(i)] = True
        out.append((rec.user_map.raw(i), rec.slate(rec.scores([i])[0], exclude, k, rerank), False))
    return out


@pytest.mark.parametrize("batch_size", [1, 4, 512])
def test_batch_equals_one_user_at_a_time(batch_size):
    rec = _recommender()
    users = ["u5", "nobody", "u3", "u0", "u5", " u7 ", "u29", "other"]
    extra = [[100, 101, "not-an-item"], [], [], (104,), [], [102], [], [100, 103]]
    cases = [dict(), dict(filter_seen=False), dict(items=[100, 104, 105, 110, 111, 123]),
             dict(extra_seen=extra), dict(items=[101, 102, 103], extra_seen=extra, filter_seen=False)]
    for k in (1, 3, 10, 25, 40):
        for kw in cases:
            got = rec.recommend_many(users, k, batch_size=batch_size, **kw)
            want = _one_by_one(rec, users, k, **kw)
            assert [(r.user, r.items, r.fallback) for r in got] == want, (k, kw)
    assert rec.recommend_many(["u3"], 5)[0].items == []  # every item seen: nothing left to recommend


def test_batch_rerank_equals_one_user_at_a_time():
    from ncf.rerank.lagrangian import PerRequestReranker

    rec = _recommender(1)
    users = ["u1", "u2", "stranger", "u9"]
    with pytest.raises(ConfigError, match="re-ranking not available"):
        rec.recommend_many(users, 5, rerank=True)
    rng = np.random.default_rng(0)
    rec.reranker = PerRequestReranker(rng.random(rec.n_items) + 0.5, rng.random(rec.n_items) - 0.5, k=5)
    got = rec.recommend_many(users, 5, rerank=True, batch_size=2)
    want = _one_by_one(rec, users, 5, rerank=True)
    assert [(r.user, r.items, r.fallback) for r in got] == want
    assert [r.reranked for r in got] == [True, True, False, True]
    assert all("utility" in it for r in got if not r.fallback for it in r.items)


def _rows_frame(model, users, k):
    """The DataFrame as built before: one dict per row, pandas inferring every column."""
    recs = model.recommender.recommend_many(users, k)
    rows = [{"user": r.user, "rank": n, **it, "fallback": r.fallback} for r in recs for n, it in enumerate(r.items, 1)]
    return pd.DataFrame(rows, columns=["user", "rank", "item", "score", "title", "fallback"]).drop(columns="title")


def test_dataframe_from_arrays_equals_the_rows_it_replaces(toy_dataset):
    model = ncf.fit("ease", toy_dataset, progress=False)
    for users in (toy_dataset.train.user_map.raw_ids[:7], toy_dataset.train.user_map.raw_ids[:7] + ["stranger", 10**6]):
        got = model.recommend(users, k=6, batch_size=3)
        pd.testing.assert_frame_equal(got, _rows_frame(model, users, 6))
    assert got.loc[got.user == "stranger", "fallback"].all() and not got.loc[got.user == users[0], "fallback"].any()
    df = pd.DataFrame({"user": list("aabbbcc"), "item": ["x", "y", "x", "z", "y", "z", "w"]})
    text = ncf.fit("pop", ncf.from_pandas(df, valid=False), progress=False)  # text ids
    pd.testing.assert_frame_equal(text.recommend(["a", "c", "new"], k=2), _rows_frame(text, ["a", "c", "new"], 2))


def test_progress_is_told_of_every_user():
    rec = _recommender()
    done = []
    before = rec.model.s.clone()
    rec.recommend_table([f"u{i}" for i in range(30)] + ["x", "y"], 3, batch_size=8, progress=done.append)
    assert done == [8, 8, 8, 6, 2]
    rec.recommend_table([f"u{i}" for i in range(30)], 3, batch_size=30)  # score_all gives a view here
    assert torch.equal(torch.nan_to_num(rec.model.s), torch.nan_to_num(before))


def test_read_user_file_layouts_and_errors(tmp_path):
    f = tmp_path / "u.txt"
    f.write_text("196\n 22 \nalice\n\n")
    assert read_user_file(f) == ["196", " 22 ", "alice"]  # the id rule strips later, against the run's map
    f.write_text("user,segment\n196,a\n22,b\n")
    assert read_user_file(f) == ["196", "22"]
    f.write_text("user\n7\n")
    assert read_user_file(f) == ["7"]
    f.write_text("id,segment\n196,a\n")
    with pytest.raises(DataError, match="needs a column 'user'.*id, segment"):
        read_user_file(f)
    f.write_text("1\n\n2\n")
    with pytest.raises(DataError, match=r"u.txt:2: empty user id"):
        read_user_file(f)
    with pytest.raises(DataError, match="no such file"):
        read_user_file(tmp_path / "missing.txt")


def _cli(capsys, *argv):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def saved_run(toy_dataset, tmp_path):
    model = ncf.fit("ease", toy_dataset, progress=False)
    return model, model.save(tmp_path / "run")


def test_cli_recommend_users_file_to_csv_and_parquet(saved_run, tmp_path, capsys):
    model, run = saved_run
    known = model.user_ids[:5]
    users = tmp_path / "users.txt"
    users.write_text("\n".join([str(u) for u in known] + ["stranger", f" {known[0]} "]) + "\n")
    out = tmp_path / "recs.csv"
    code, stdout, err = _cli(capsys, "recommend", run, "--users", users, "--out", out, "-k", 4, "--json")
    assert code == 0, err
    assert json.loads(stdout) == {"out": str(out), "users": 7, "rows": 28, "fallback_users": 1, "k": 4}
    got = pd.read_csv(out)
    assert list(got.columns) == ["user", "rank", "item", "score", "fallback"]
    want = model.recommend(known + ["stranger", known[0]], k=4)[["user", "rank", "item", "score", "fallback"]]
    assert got["user"].astype(str).tolist() == want["user"].astype(str).tolist()
    assert got[["rank", "item", "fallback"]].equals(want[["rank", "item", "fallback"]])
    assert np.allclose(got["score"], want["score"], rtol=1e-12)
    # the same slate as one user at a time on the command line
    code, stdout, _ = _cli(capsys, "recommend", run, "--user", known[1], "-k", 4, "--json")
    assert [it["item"] for it in json.loads(stdout)["items"]] == got.loc[got.user.astype(str) == str(known[1]),
                                                                          "item"].tolist()
    pq = tmp_path / "recs.parquet"
    code, _, err = _cli(capsys, "recommend", run, "--users", users, "--out", pq, "-k", 4)
    assert code == 0, err
    back = pd.read_parquet(pq)
    assert back["item"].tolist() == got["item"].tolist() and back["user"].astype(str).tolist() == \
        got["user"].astype(str).tolist()


def test_cli_recommend_refuses_to_overwrite_and_bad_paths(saved_run, tmp_path, capsys):
    _, run = saved_run
    users = tmp_path / "users.csv"
    users.write_text("user\n1\n2\n")
    out = tmp_path / "recs.csv"
    out.write_text("keep me\n")
    code, _, err = _cli(capsys, "recommend", run, "--users", users, "--out", out)
    assert code == 2 and "exists; pass --overwrite to replace it" in err
    assert out.read_text() == "keep me\n"
    code, _, err = _cli(capsys, "recommend", run, "--users", users, "--out", out, "--overwrite", "-k", 3)
    assert code == 0, err
    assert len(pd.read_csv(out)) == 6
    for argv, msg in ((["--users", users], "needs --out"), (["--users", users, "--out", tmp_path / "r.txt"],
                                                            "extension"),
                      (["--users", users, "--out", run / "recs.csv"], "lies in the run directory"),
                      (["--user", "1", "--out", out], "go with --users"),
                      (["--user", "1", "--users", users, "--out", out], "exactly one of")):
        code, _, err = _cli(capsys, "recommend", run, *argv)
        assert code == 2 and msg in err, (argv, err)


def test_write_table_refuses_an_existing_file(tmp_path):
    from ncf.recommend import write_table

    p = tmp_path / "t.csv"
    write_table({"user": [1], "item": [2]}, p)
    with pytest.raises(RunExistsError):
        write_table({"user": [1], "item": [3]}, p)
    write_table({"user": [1], "item": [3]}, p, overwrite=True)
    assert pd.read_csv(p)["item"].tolist() == [3]
    assert [x.name for x in tmp_path.iterdir()] == ["t.csv"]  # no temporary file left behind
