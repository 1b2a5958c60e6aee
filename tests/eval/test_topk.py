"""The ``topk`` protocol: metrics against hand-computed values and a slow plain-Python reference,
several cut-offs from one list, blockwise scoring, and ``ncf evaluate --protocol topk``."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ncf.data.split import HoldOut
from ncf.eval import topk as T

# user 0: hits at ranks 1 and 3 of 4, 3 relevant items; user 1: one hit at rank 2, 1 relevant
HITS = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
NREL = np.array([3, 1])


def test_hand_computed_values():
    assert T.precision_at_k(HITS, NREL) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert T.recall_at_k(HITS, NREL) == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert T.capped_recall_at_k(HITS, NREL) == pytest.approx((2 / 3 + 1 / 1) / 2)  # n <= K: the same
    assert T.hit_rate_at_k(HITS, NREL) == 1.0
    assert T.mrr_at_k(HITS, NREL) == pytest.approx((1 / 1 + 1 / 2) / 2)
    # AP@4: user 0 (1/1 + 2/3) / min(3, 4); user 1 (1/2) / 1
    assert T.map_at_k(HITS, NREL) == pytest.approx(((1 + 2 / 3) / 3 + 0.5) / 2)
    dcg0 = 1 / math.log2(2) + 1 / math.log2(4)
    idcg0 = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert T.ndcg_at_k(HITS, NREL) == pytest.approx((dcg0 / idcg0 + (1 / math.log2(3)) / 1) / 2)
    assert T.coverage(np.array([[0, 1], [1, 2]]), 10) == pytest.approx(0.3)


def test_one_positive_reduces_to_hr_and_ndcg_of_a_rank():
    hits = np.zeros((1, 10), dtype=bool)
    hits[0, 3] = True
    assert T.ndcg_at_k(hits, [1]) == pytest.approx(1 / math.log2(5))
    assert T.recall_at_k(hits, [1]) == T.hit_rate_at_k(hits, [1]) == 1.0
    assert T.map_at_k(hits, [1]) == pytest.approx(T.mrr_at_k(hits, [1])) == pytest.approx(0.25)


def test_recall_and_capped_recall_differ_when_a_user_holds_out_more_than_k():
    # 5 held-out items, K = 2, both in the list: LightGCN's recall 2/5, Mult-VAE's 2/min(5, 2) = 1
    hits = np.array([[True, True]])
    assert T.recall_at_k(hits, [5]) == pytest.approx(0.4)
    assert T.capped_recall_at_k(hits, [5]) == pytest.approx(1.0)
    # NDCG's ideal is over min(n, K) = 2 positions: a perfect list scores 1 whatever n is
    assert T.ndcg_at_k(hits, [5]) == pytest.approx(1.0)
    assert T.map_at_k(hits, [5]) == pytest.approx(1.0)


def test_several_cutoffs_from_one_list_equal_each_cutoff_alone():
    rng = np.random.default_rng(0)
    hits = rng.random((50, 20)) < 0.2
    nrel = np.maximum(hits.sum(1), 1) + rng.integers(0, 30, 50)
    lists = rng.integers(0, 100, (50, 20))
    both = T.summarize_topk(hits, nrel, lists, 100, (5, 20))
    assert list(both) == [f"{m}@{k}" for k in (5, 20) for m in T.METRICS]
    for k in (5, 20):
        alone = T.summarize_topk(hits[:, :k], nrel, lists[:, :k], 100, k)
        assert alone == {m: v for m, v in both.items() if m.endswith(f"@{k}")}
    assert both["recall@20"] != both["capped_recall@20"]  # some users hold out more than 20


def _slow(hits, nrel):
    """Plain-Python reference of every metric."""
    out = {"p": [], "r": [], "cr": [], "hr": [], "map": [], "mrr": [], "ndcg": []}
    for row, n in zip(hits.tolist(), nrel.tolist(), strict=True):
        k = len(row)
        out["p"].append(sum(row) / k)
        out["r"].append(sum(row) / n)
        out["cr"].append(sum(row) / min(n, k))
        out["hr"].append(float(any(row)))
        ap, h = 0.0, 0
        for i, x in enumerate(row, 1):
            if x:
                h += 1
                ap += h / i
        out["map"].append(ap / min(n, k))
        out["mrr"].append(next((1 / i for i, x in enumerate(row, 1) if x), 0.0))
        dcg = sum(1 / math.log2(i + 1) for i, x in enumerate(row, 1) if x)
        out["ndcg"].append(dcg / sum(1 / math.log2(i + 1) for i in range(1, min(n, k) + 1)))
    return {m: sum(v) / len(v) for m, v in out.items()}


def test_against_slow_reference():
    rng = np.random.default_rng(3)
    hits = rng.random((200, 7)) < 0.3
    nrel = np.maximum(hits.sum(1), 1) + rng.integers(0, 4, 200)
    ref = _slow(hits, nrel)
    assert T.precision_at_k(hits, nrel) == pytest.approx(ref["p"])
    assert T.recall_at_k(hits, nrel) == pytest.approx(ref["r"])
    assert T.map_at_k(hits, nrel) == pytest.approx(ref["map"])
    assert T.mrr_at_k(hits, nrel) == pytest.approx(ref["mrr"])
    assert T.ndcg_at_k(hits, nrel) == pytest.approx(ref["ndcg"])
    assert T.capped_recall_at_k(hits, nrel) == pytest.approx(ref["cr"])
    assert T.hit_rate_at_k(hits, nrel) == pytest.approx(ref["hr"])


def test_bad_input():
    with pytest.raises(ValueError):
        T.recall_at_k(HITS, [1])
    with pytest.raises(ValueError):
        T.recall_at_k(HITS, [0, 1])


class Fixed:
    """A scorer with a fixed score matrix."""

    def __init__(self, s):
        self.s = torch.as_tensor(s, dtype=torch.float32)
        self.n_users, self.n_items = self.s.shape

    def score_all(self, users):
        return self.s[users]


def test_evaluate_topk_excludes_seen_and_breaks_ties_by_index():
    scores = np.array([[5, 4, 4, 3, 0], [1, 1, 1, 1, 1]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32))
    lists = T.top_k_lists(Fixed(scores), np.array([0, 1]), seen, 2)
    assert lists.tolist() == [[1, 2], [0, 1]]
    # user 0 holds out items 2 and 4, user 1 item 1
    ho = HoldOut(np.array([0, 0, 1]), np.array([2, 4, 1]), np.zeros((3, 1), dtype=np.int64))
    r = T.evaluate_topk(Fixed(scores), ho, seen, k=2)
    assert r["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert r["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert r["mrr@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert r["coverage@2"] == pytest.approx(3 / 5)


def _slow_protocol(scores, seen, pairs, k):
    """The whole protocol in plain Python: each test user's unseen items sorted by (-score, index),
    the first k, every metric by :func:`_slow`, coverage from the lists."""
    by_user = {}
    for u, i in pairs:
        by_user.setdefault(u, set()).add(i)
    hits, nrel, lists = [], [], []
    for u in sorted(by_user):
        unseen = [i for i in range(scores.shape[1]) if not seen[u, i]]
        top = sorted(unseen, key=lambda i: (-scores[u, i], i))[:k]
        lists += top
        hits.append([i in by_user[u] for i in top])
        nrel.append(len(by_user[u]))
    ref = _slow(np.array(hits), np.array(nrel))
    ref["coverage"] = len(set(lists)) / scores.shape[1]
    return ref


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_topk_against_the_slow_protocol(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 30
    scores = rng.integers(0, 6, (n_users, n_items)).astype(np.float32)  # many ties
    seen = rng.random((n_users, n_items)) < 0.3
    free = np.argwhere(~seen)
    pairs = free[rng.choice(len(free), 150, replace=False)]
    pairs = np.concatenate([pairs, pairs[:10]])  # a repeated pair counts once
    ho = HoldOut(pairs[:, 0], pairs[:, 1], np.zeros((len(pairs), 1), dtype=np.int64))
    got = T.evaluate_topk(Fixed(scores), ho, sp.csr_matrix(seen.astype(np.float32)), (3, 7))
    for k in (3, 7):
        ref = _slow_protocol(scores, seen, [tuple(p) for p in pairs.tolist()], k)
        for key, name in (("p", "precision"), ("r", "recall"), ("cr", "capped_recall"), ("hr", "hr"),
                          ("map", "map"), ("mrr", "mrr"), ("ndcg", "ndcg"), ("coverage", "coverage")):
            assert got[f"{name}@{k}"] == pytest.approx(ref[key]), (name, k)


def test_blockwise_lists_equal_one_block():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, (37, 25)).astype(np.float32)
    seen = sp.random(37, 25, density=0.3, format="csr", random_state=1, dtype=np.float32)
    users = rng.permutation(37)[:30]
    whole = T.top_k_lists(Fixed(scores), users, seen, 6, batch_users=1000)
    for b in (1, 4, 7):
        assert np.array_equal(T.top_k_lists(Fixed(scores), users, seen, 6, batch_users=b), whole)
    for row, u in zip(whole, users, strict=True):
        assert not set(row.tolist()) & set(seen[u].indices.tolist())


def test_lists_are_capped_at_the_catalogue_and_bad_cutoffs_refused():
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    ho = HoldOut(np.array([0, 1]), np.array([3, 0]), np.zeros((2, 1), dtype=np.int64))
    r = T.evaluate_topk(Fixed(scores), ho, sp.csr_matrix((3, 4), dtype=np.float32), (2, 10))
    assert r["hr@10"] == r["recall@10"] == 1.0 and r["coverage@10"] == 1.0
    with pytest.raises(ValueError, match="cut-offs"):
        T.evaluate_topk(Fixed(scores), ho, sp.csr_matrix((3, 4), dtype=np.float32), (0,))


def test_evaluator_topk_protocol_is_the_same_function():
    from ncf.eval.evaluator import evaluate

    rng = np.random.default_rng(2)
    scores = rng.random((10, 15)).astype(np.float32)
    ho = HoldOut(np.repeat(np.arange(10), 2), rng.integers(0, 15, 20), np.zeros((20, 1), dtype=np.int64))
    seen = sp.csr_matrix((10, 15), dtype=np.float32)
    assert evaluate(Fixed(scores), ho, "topk", seen=seen, ks=(5, 10)) == T.evaluate_topk(Fixed(scores), ho, seen,
                                                                                           (5, 10))


def test_cli_evaluate_topk_prints_every_metric_at_every_k(tmp_path, capsys):
    import json

    from ncf.checkpoint import load_config, load_model
    from ncf.cli import main
    from ncf.data.datasets import DataConfig, load_dataset

    rng = np.random.default_rng(3)
    lines = [f"{u}\t{i}\t5\t{1000 + t}" for u in range(1, 41)
             for t, i in enumerate(rng.choice(np.arange(1, 16) if u % 2 else np.arange(16, 31), 9, replace=False))]
    (tmp_path / "r.tsv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"

    def cli(*argv):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            assert not e.code, capsys.readouterr().err
        return capsys.readouterr().out

    cli("train", "--dataset", tmp_path / "r.tsv", "--model", "ease", "--out", run, "--quiet")
    res = json.loads(cli("evaluate", run, "--protocol", "topk", "-k", "10,20", "--json"))
    assert res["protocol"] == "topk"
    assert list(res["metrics"]) == [f"{m}@{k}" for k in (10, 20) for m in T.METRICS]
    ds = load_dataset(DataConfig(**load_config(run)["data"]))
    direct = T.evaluate_topk(load_model(run), ds.test, ds.seen(include_valid=True), (10, 20))
    assert res["metrics"] == pytest.approx(direct)
    assert "capped_recall@20" in cli("evaluate", run, "--protocol", "topk", "-k", "20")
