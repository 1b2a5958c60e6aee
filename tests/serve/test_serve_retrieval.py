"""Rankers score from stored user vectors exactly as the models do; two-stage retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncf.checkpoint import load_model
from ncf.models import Model
from ncf.recommend import top_k
from ncf.serve.retrieval import IndexRanker, NCFRanker, make_ranker, rank


def _bound(run):
    model = load_model(run)
    ranker = make_ranker(model)
    ranker.bind(ranker.item_features())
    return model, ranker, ranker.user_vectors()


@pytest.mark.parametrize("kind", ["gmf", "mlp", "mlp-linear", "neumf"])
def test_scores_match_the_model(model_runs, kind):
    model, ranker, vectors = _bound(model_runs[kind])
    assert isinstance(ranker, NCFRanker) and vectors.shape == (model.n_users, ranker.user_dim)
    expected = model.score_all(torch.arange(model.n_users)).numpy()
    got = np.stack([ranker.score(v) for v in vectors])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    items = np.array([3, 0, 7, 7])
    np.testing.assert_allclose(ranker.score(vectors[5], items), expected[5, items], rtol=1e-5, atol=1e-5)


def test_gmf_retrieval_is_the_score_without_bias(model_runs):
    model, ranker, vectors = _bound(model_runs["gmf"])
    np.testing.assert_allclose(ranker.retrieval_scores(vectors[2]) + model.predict.bias.item(),
                               ranker.score(vectors[2]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp-linear", "mlp", "neumf"])
def test_taylor_terms_exact_at_the_anchor(model_runs, kind):
    """Fold-in's affine scores (the first-order expansion at the mean user) equal the model at
    the expansion point (and everywhere for a tower without hidden layers, which is linear)."""
    model, ranker, vectors = _bound(model_runs[kind])
    items = np.arange(model.n_items)
    a, o = ranker.linear_terms(items)
    user = vectors.mean(0)  # the anchor is the mean MLP user vector
    np.testing.assert_allclose(o + a @ user, ranker.score(user), rtol=1e-4, atol=1e-4)
    if kind == "mlp-linear":
        np.testing.assert_allclose(o + a @ vectors[3], ranker.score(vectors[3]), rtol=1e-4, atol=1e-4)
    else:  # away from the anchor a ReLU tower is not linear: the approximation differs
        assert not np.allclose(o + a @ vectors[3], ranker.score(vectors[3]), atol=1e-3)


@pytest.mark.parametrize("kind", ["mlp-linear", "mlp", "neumf"])
def test_retrieval_rows_average_the_jacobian_over_the_users(model_runs, kind):
    """The first stage's rows: each item's MLP Jacobian averaged over the sampled users, with
    the intercept that makes the mean of the affine scores over those users exact."""
    model, ranker, vectors = _bound(model_runs[kind])
    bias = model.predict.bias.item()
    if kind == "mlp-linear":  # a linear tower: exact for every user
        np.testing.assert_allclose(ranker.retrieval_scores(vectors[3]) + bias, ranker.score(vectors[3]),
                                   rtol=1e-4, atol=1e-5)
        return
    sample = ranker.retrieval_sample().numpy()
    f = ranker.f
    users = np.zeros((len(sample), ranker.user_dim), np.float32)
    users[:, f:] = sample  # GMF part zero: only the MLP term's approximation is compared
    own = np.stack([ranker.score(u) for u in users]) - bias  # [K, n_items]
    approx = np.stack([ranker.retrieval_scores(u) for u in users])
    np.testing.assert_allclose(approx.mean(0), own.mean(0), rtol=1e-4, atol=1e-6)
    # the slope is the mean of the users' own Jacobians (autograd through the model)
    rows = ranker.retrieval_rows()
    item = 5
    grads = []
    for p in sample:
        u = torch.tensor(p, requires_grad=True)
        out = ranker._mlp(u[None], torch.tensor([item]))[0]
        grads.append(torch.autograd.grad(out, u)[0].numpy())
    np.testing.assert_allclose(rows[item, f:f + ranker.h], np.mean(grads, 0), rtol=1e-4, atol=1e-6)


def test_retrieval_rows_depend_on_the_sample_size(model_runs):
    model = load_model(model_runs["neumf"])
    one = NCFRanker(model, retrieval_users=1)
    one.bind(one.item_features())
    many = NCFRanker(model)
    many.bind(many.item_features())
    assert len(one.retrieval_sample()) == 1 and len(many.retrieval_sample()) == min(model.n_users, 64)
    assert one.retrieval_key() != many.retrieval_key()
    assert not np.allclose(one.retrieval_rows(), many.retrieval_rows())
    with pytest.raises(ValueError, match="retrieval_users"):
        NCFRanker(model, retrieval_users=0)


def test_bind_checks_shapes(model_runs):
    model = load_model(model_runs["neumf"])
    ranker = make_ranker(model)
    feats = ranker.item_features()
    feats["gmf"] = feats["gmf"][:-1]
    with pytest.raises(ValueError, match="'gmf'"):
        ranker.bind(feats)
    with pytest.raises(RuntimeError, match="bind"):
        make_ranker(model).score(np.zeros(ranker.user_dim, np.float32))


def test_top_k_order_ties_and_exclusion():
    s = np.array([1.0, 3.0, 3.0, -np.inf, 2.0, 5.0])
    ex = np.zeros(6, bool)
    ex[5] = True
    np.testing.assert_array_equal(top_k(s, ex, 3), [1, 2, 4])
    np.testing.assert_array_equal(top_k(s, None, 10), [5, 1, 2, 4, 0])  # -inf never returned
    assert len(top_k(s, np.ones(6, bool), 3)) == 0


def test_rank_excludes_and_two_stage_agrees_with_exact(model_runs):
    model, ranker, vectors = _bound(model_runs["neumf"])
    n = model.n_items
    ex = np.zeros(n, bool)
    ex[[0, 5, 9]] = True
    for u in range(model.n_users):
        exact, scores = rank(ranker, vectors[u], ex, 5)
        assert not set(exact) & {0, 5, 9} and np.all(np.diff(scores) <= 0)
        full_pool, _ = rank(ranker, vectors[u], ex, 5, candidates=n - 1)  # every unexcluded item
        np.testing.assert_array_equal(full_pool, exact)
        small, small_scores = rank(ranker, vectors[u], ex, 5, candidates=8)
        assert len(small) == 5 and not set(small) & {0, 5, 9}
        np.testing.assert_allclose(small_scores, ranker.score(vectors[u], small), rtol=1e-5)
    # on this random model the approximation loses some of the exact top 5 with 8 candidates
    lost = sum(set(rank(ranker, v, ex, 5)[0]) != set(rank(ranker, v, ex, 5, candidates=8)[0]) for v in vectors)
    assert 0 < lost < model.n_users


class _Tabular(Model):
    """A model of no known structure: served through its own score_all."""

    name = "tabular"

    def __init__(self, table: torch.Tensor):
        super().__init__(*table.shape)
        self.table = torch.nn.Parameter(table)

    def forward(self, users, items):
        return self.table[users, items]


def test_index_ranker_for_other_models():
    table = torch.randn(4, 6)
    ranker = make_ranker(_Tabular(table))
    assert isinstance(ranker, IndexRanker) and not ranker.can_retrieve
    ranker.bind(ranker.item_features())
    vec = ranker.user_vectors()
    np.testing.assert_allclose(ranker.score(vec[2]), table[2].detach().numpy())
    np.testing.assert_allclose(ranker.score(vec[1], np.array([4, 0])), table[1, [4, 0]].detach().numpy())
    idx, _ = rank(ranker, vec[3], np.zeros(6, bool), 2, candidates=3)  # no retrieval stage: exact
    np.testing.assert_array_equal(idx, np.argsort(-table[3].detach().numpy())[:2])
