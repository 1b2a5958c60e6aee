"""LightGCN: the normalised graph and its propagation against dense references, the BPR
training loop (learning, epoch choice, epochs without validation, the deadline), the
memory refusal and the checkpoint round trip."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import ncf.models.base as base
from ncf.data.split import HoldOut
from ncf.errors import ConfigError
from ncf.eval.topk import evaluate_topk
from ncf.models import lightgcn as lg
from ncf.models.lightgcn import LightGCN, Propagate, normalized_adjacency, propagate_mean, to_torch_csr

# 3 users x 4 items; item 3 has no interaction (a zero row and column in Â)
R = np.array([[1, 1, 0, 0],
              [0, 1, 1, 0],
              [1, 0, 1, 0]], dtype=np.float32)


def _dense_a_hat() -> np.ndarray:
    """Â by hand: A = [[0, R], [Rᵀ, 0]], degrees, D^-1/2 A D^-1/2 (zero-degree nodes stay 0)."""
    a = np.zeros((7, 7), np.float64)
    a[:3, 3:] = R
    a[3:, :3] = R.T
    deg = a.sum(1)
    inv = np.array([d ** -0.5 if d else 0.0 for d in deg])
    return inv[:, None] * a * inv[None, :]


def _cfg(**kw):
    return SimpleNamespace(seed=0, device="cpu", progress=False, **kw)


def test_normalized_adjacency_matches_the_hand_built_graph():
    got = normalized_adjacency(sp.csr_matrix(R)).toarray()
    ref = _dense_a_hat()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(got, got.T)
    assert got[1, 3 + 1] == pytest.approx(1 / np.sqrt(2 * 2))  # user 1 (degree 2), item 1 (degree 2)
    assert not got[6].any()  # the item without interactions


def test_propagation_is_the_mean_of_layers_0_to_k():
    ref = _dense_a_hat()
    x = np.random.default_rng(0).normal(size=(7, 5))
    graph = to_torch_csr(normalized_adjacency(sp.csr_matrix(R)))
    xt = torch.tensor(x, dtype=torch.float32)
    for k in (0, 1, 3):
        layers = [np.linalg.matrix_power(ref, j) @ x for j in range(k + 1)]
        np.testing.assert_allclose(propagate_mean(graph, xt, k).numpy(), np.mean(layers, axis=0), atol=1e-6)
    # the model's propagated table is the same mean over its ego embeddings
    m = LightGCN(3, 4, factors=5, layers=2)
    m.set_graph(sp.csr_matrix(R))
    e = m.embedding.detach().double().numpy()
    ref2 = (e + ref @ e + ref @ ref @ e) / 3
    np.testing.assert_allclose(m.propagated().detach().numpy(), ref2, atol=1e-6)


def test_propagation_gradient_equals_the_dense_one():
    ref = torch.tensor(_dense_a_hat(), dtype=torch.float32)
    graph = to_torch_csr(normalized_adjacency(sp.csr_matrix(R)))
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(7, 4, generator=torch.Generator().manual_seed(2))
    x1 = x.clone().requires_grad_(True)
    (Propagate.apply(graph, x1, 3) * w).sum().backward()
    x2 = x.clone().requires_grad_(True)
    h, out = x2, x2
    for _ in range(3):
        h = ref @ h
        out = out + h
    (out / 4 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


def test_batch_loss_is_bpr_plus_the_papers_l2():
    m = LightGCN(3, 4, factors=3, layers=1, l2=0.5)
    m.set_graph(sp.csr_matrix(R))
    u, p, n = torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([3, 0])
    loss, bpr = m.batch_loss(u, p, n)
    out = m.propagated().detach()
    e = m.embedding.detach()
    ref_bpr = torch.nn.functional.softplus(-((out[u] * out[3 + p]).sum(1) - (out[u] * out[3 + n]).sum(1))).mean()
    ref_reg = (e[u].pow(2).sum() + e[3 + p].pow(2).sum() + e[3 + n].pow(2).sum()) / 2 / 2
    assert bpr == pytest.approx(float(ref_bpr), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ref_bpr + 0.5 * ref_reg), rel=1e-5)


def test_training_lowers_the_loss_and_learns_the_planted_groups(toy_dataset, own_group_auc):
    m = LightGCN(toy_dataset.n_users, toy_dataset.n_items, epochs=30, lr=0.01, batch_size=128, eval_every=5,
                 patience=0)
    m.fit(toy_dataset, _cfg())
    losses = [r["loss"] for r in m.stats["history"]]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    users = np.arange(toy_dataset.n_users)
    assert own_group_auc(m.score_all(torch.as_tensor(users)).numpy(), toy_dataset, users) > 0.9
    # leave-one-out validation (one row a user): the sampled protocol's monitor chooses the epoch
    assert m.stats["valid_metric"] == "ndcg@10" and m.stats["best_epoch"] in range(5, 31, 5)
    assert m.stats["epochs_run"] == 30


def _several_rows_dataset(toy_dataset):
    """The toy training matrix with two of each user's items moved to a validation holdout."""
    t = toy_dataset.train.matrix.tocsr()
    rows, cols = t.nonzero()
    first = np.r_[True, rows[1:] != rows[:-1]]
    second = np.r_[False, first[:-1]]
    held = first | second
    train = sp.csr_matrix((np.ones((~held).sum(), np.float32), (rows[~held], cols[~held])), shape=t.shape)
    valid = HoldOut(rows[held], cols[held], np.zeros((held.sum(), 1), np.int64))
    return SimpleNamespace(train=SimpleNamespace(matrix=train, n_users=t.shape[0], n_items=t.shape[1]), valid=valid)


def test_several_validation_rows_per_user_choose_on_full_ranking_recall(toy_dataset):
    ds = _several_rows_dataset(toy_dataset)
    m = LightGCN(ds.train.n_users, ds.train.n_items, epochs=12, lr=0.01, batch_size=128, eval_every=3, patience=0)
    m.fit(ds, _cfg())
    valids = {r["epoch"]: r["valid"]["recall@20"] for r in m.stats["history"] if "valid" in r}
    assert sorted(valids) == [3, 6, 9, 12] and m.stats["valid_metric"] == "recall@20"
    best = max(valids, key=lambda e: (valids[e], -e))
    assert m.stats["best_epoch"] == best
    # the kept weights are that epoch's: validating again gives its score
    again = lg.topk_metrics(m, ds.valid.users, ds.valid.items, ds.train.matrix, 20)["recall@20"]
    assert again == pytest.approx(valids[best])


def test_topk_metrics_agree_with_the_evaluator(toy_dataset):
    ds = _several_rows_dataset(toy_dataset)
    m = LightGCN(ds.train.n_users, ds.train.n_items, epochs=2, batch_size=128)
    m.fit(SimpleNamespace(train=ds.train, valid=None), _cfg())
    ref = evaluate_topk(m, ds.valid, ds.train.matrix, 10)
    got = lg.topk_metrics(m, ds.valid.users, ds.valid.items, ds.train.matrix, 10, batch_users=7)
    assert got["recall@10"] == pytest.approx(ref["recall@10"]) and got["ndcg@10"] == pytest.approx(ref["ndcg@10"])


def test_without_validation_exactly_the_given_epochs_run(toy_dataset):
    m = LightGCN(toy_dataset.n_users, toy_dataset.n_items, epochs=7, batch_size=256, patience=1)
    m.fit(SimpleNamespace(train=toy_dataset.train, valid=None), _cfg())
    assert m.stats["epochs_run"] == 7 and m.stats["best_epoch"] is None and m.stats["stopped"] is None
    assert [r["epoch"] for r in m.stats["history"]] == list(range(1, 8))


def test_a_passed_deadline_stops_after_one_epoch_keeping_the_best(toy_dataset):
    m = LightGCN(toy_dataset.n_users, toy_dataset.n_items, epochs=50, batch_size=256, eval_every=1)
    m.fit(toy_dataset, _cfg(deadline=time.monotonic()))
    assert m.stats["epochs_run"] == 1 and m.stats["stopped"] == "deadline" and m.stats["best_epoch"] == 1
    m = LightGCN(toy_dataset.n_users, toy_dataset.n_items, epochs=50, batch_size=256)
    m.fit(SimpleNamespace(train=toy_dataset.train, valid=None), _cfg(deadline=time.monotonic() + 3600))
    assert m.stats["epochs_run"] == 50  # a far deadline changes nothing


def test_scores_survive_a_state_dict_round_trip_without_the_graph(toy_dataset):
    m = LightGCN(toy_dataset.n_users, toy_dataset.n_items, epochs=3, batch_size=256)
    m.fit(toy_dataset, _cfg())
    back = LightGCN(toy_dataset.n_users, toy_dataset.n_items)
    back.load_state_dict(m.state_dict())
    assert back.graph is None
    users = torch.arange(toy_dataset.n_users)
    torch.testing.assert_close(back.score_all(users), m.score_all(users), rtol=0, atol=0)
    # the stored finals are the propagation of the stored ego table, not the ego table itself
    full = m.propagated().detach()
    torch.testing.assert_close(m.user_final, full[:toy_dataset.n_users])
    assert not torch.equal(m.user_final, m.embedding[:toy_dataset.n_users])


def test_bad_settings_and_memory_are_refused(toy_dataset, monkeypatch):
    for bad in ({"factors": 0}, {"layers": -1}, {"lr": 0}, {"l2": -1.0}, {"batch_size": 0}, {"epochs": 0}):
        with pytest.raises(ConfigError, match="lightgcn"):
            LightGCN(3, 4, **bad)
    need = LightGCN.memory_estimate(29858, 40981, 810128, {})
    assert 50e6 < need < 2e9  # Gowalla at the paper's settings: a few hundred MB
    monkeypatch.setattr(base, "available_memory", lambda: 1000)
    m = LightGCN(toy_dataset.n_users, toy_dataset.n_items, epochs=1)
    with pytest.raises(ConfigError, match="of memory"):
        m.fit(toy_dataset, _cfg())
