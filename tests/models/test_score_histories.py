"""``score_histories`` / ``fold_in`` (issue 18): users known only by their item histories.

Item-based models must score a training user's own history exactly as ``score_all`` scores
that user; models with user tables fold a fresh vector in, which must rank the clicked
items (and their neighbours) up, and must not modify the model.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ncf.models import GMF, MLP, NeuMF, get_model_class


class _Data:
    def __init__(self, matrix):
        self.train = type("T", (), {"matrix": sp.csr_matrix(matrix), "timestamps": None})()


def _history_of(model_matrix: sp.csr_matrix, u: int) -> torch.Tensor:
    m = model_matrix.tocsr()
    return torch.from_numpy(m.indices[m.indptr[u]:m.indptr[u + 1]].astype(np.int64))


@pytest.mark.parametrize("name,params", [("pop", {}), ("itemknn", {"k": 5, "shrink": 2.0}), ("ease", {"l2": 5.0})])
def test_item_based_models_score_histories_like_their_users(toy_dataset, name, params):
    x = toy_dataset.train.matrix
    model = get_model_class(name).from_params(*x.shape, **params).fit(_Data(x))
    users = [0, 1, 7, 30]
    got = model.score_histories([_history_of(x, u) for u in users])
    want = model.score_all(torch.tensor(users))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    empty = model.score_histories([torch.empty(0, dtype=torch.int64)])
    assert empty.shape == (1, model.n_items)


def test_item2vec_scores_histories_like_its_profiles(toy_dataset):
    pytest.importorskip("gensim")
    from ncf.config import TrainConfig

    x = toy_dataset.train.matrix
    model = get_model_class("item2vec").from_params(*x.shape, vector_size=8, epochs=2, recent=0)
    model.fit(toy_dataset, TrainConfig(model="item2vec", seed=0))
    users = [0, 3, 9]
    torch.testing.assert_close(model.score_histories([_history_of(x, u) for u in users]),
                               model.score_all(torch.tensor(users)), rtol=1e-5, atol=1e-5)


def test_ials_fold_in_is_the_als_user_step(toy_dataset):
    pytest.importorskip("implicit")
    x = toy_dataset.train.matrix
    model = get_model_class("ials").from_params(*x.shape, factors=4, iterations=15, regularization=0.05, alpha=5.0,
                                                unobserved_weight=0.0, frequency_scaling=0.0)
    model.fit(_Data(x))
    users = [0, 1, 2, 3]
    folded = model.score_histories([_history_of(x, u) for u in users])
    trained = model.score_all(torch.tensor(users))
    for f, t in zip(folded, trained, strict=True):  # converged ALS: one more user step barely moves
        assert np.corrcoef(f.numpy(), t.numpy())[0, 1] > 0.95


@pytest.mark.parametrize("params", [{"alpha": 5.0, "regularization": 0.05, "unobserved_weight": 0.0,
                                     "frequency_scaling": 0.0},
                                    {"unobserved_weight": 0.3, "regularization": 0.5, "frequency_scaling": 0.0}])
def test_ials_fold_in_solves_implicits_user_equation(toy_dataset, params):
    """The closed form is implicit's own user step (confidence alpha on seen items, the fit's
    alpha and regularisation, the unobserved weight converted), not an approximation of it."""
    pytest.importorskip("implicit")
    from implicit.cpu.als import user_factor

    x = toy_dataset.train.matrix.tocsr()
    model = get_model_class("ials").from_params(*x.shape, factors=4, iterations=5, **params)
    model.fit(_Data(x))
    alpha, reg = model.solver_params()
    y = model.item_factors.double().numpy()
    cui = (sp.csr_matrix(x, dtype=np.float64) > 0).astype(np.float64) * alpha
    users = [0, 5, 11]
    got = model.fold_in([_history_of(x, u) for u in users]).double().numpy()
    want = np.stack([user_factor(y, y.T @ y, cui, u, reg, y.shape[1]) for u in users])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _spread(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model.eval()


TABLES = [(GMF, {"factors": 5}), (MLP, {"layers": (8, 6, 4)}), (NeuMF, {"factors": 4, "layers": (8, 6, 4)}),
          ("bpr", {"factors": 5}), ("mf", {"factors": 5})]


def _table_model(cls, params):
    cls = get_model_class(cls) if isinstance(cls, str) else cls
    return _spread(cls.from_params(20, 30, **params))


@pytest.mark.parametrize("cls,params", TABLES, ids=lambda x: getattr(x, "name", x) if not isinstance(x, dict) else "")
def test_score_vectors_of_trained_rows_is_score_all(cls, params):
    model = _table_model(cls, params)
    named = dict(model.named_parameters())
    rows = torch.cat([named[n].detach()[:4] for n in model.foldin_tables], dim=1)
    assert rows.shape[1] == model.foldin_dim()
    torch.testing.assert_close(model.score_vectors(rows), model.score_all(torch.arange(4)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,params", TABLES, ids=lambda x: getattr(x, "name", x) if not isinstance(x, dict) else "")
def test_fold_in_ranks_the_clicked_items_up_and_leaves_the_model_alone(cls, params):
    model = _table_model(cls, params)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    base = model.score_vectors(model.mean_user_vector()[None])[0]
    moved_up = 0
    for item in range(10):
        s = model.score_histories([torch.tensor([item])])[0]
        rank_before, rank_after = int((base > base[item]).sum()), int((s > s[item]).sum())
        moved_up += rank_after < rank_before or rank_after == 0
    assert moved_up >= 8, f"{model.name}: the clicked item ranked higher in only {moved_up}/10 fold-ins"
    for n, p in model.state_dict().items():
        torch.testing.assert_close(p, before[n])
    assert all(p.grad is None for p in model.parameters())
    h = [torch.tensor([1, 4, 6])]
    torch.testing.assert_close(model.fold_in(h), model.fold_in(h))  # seeded: the same history, the same vector


def test_fold_in_pulls_towards_the_clicked_items_neighbours():
    """GMF: after clicking item i, items whose (weighted) embedding is close to i's gain rank."""
    model = _table_model(GMF, {"factors": 6})
    q = model.item_emb.weight.detach() * model.predict.weight.detach()[0]
    base = model.score_vectors(model.mean_user_vector()[None])[0]
    gains = []
    for item in range(10):
        sims = torch.nn.functional.cosine_similarity(q, q[item][None], dim=1)
        sims[item] = -2
        nbrs = torch.topk(sims, 5).indices
        s = model.score_histories([torch.tensor([item])])[0]
        rank = lambda sc, i: int((sc > sc[i]).sum())  # noqa: E731
        gains.append(np.mean([rank(base, j) - rank(s, j) for j in nbrs.tolist()]))
    assert np.mean(gains) > 2, gains


def test_fold_in_refuses_models_without_tables_and_bad_items():
    model = _table_model(GMF, {"factors": 3})
    with pytest.raises(ValueError, match="outside"):
        model.fold_in([torch.tensor([99])])
    torch.testing.assert_close(model.fold_in([torch.empty(0, dtype=torch.int64)]), model.mean_user_vector()[None])
    pop = get_model_class("widedeep")
    assert not pop.foldin_tables


def test_scaled_ials_fold_in_is_the_exact_user_step_of_its_objective(toy_dataset):
    """With the frequency-scaled regulariser the closed form is Rendle et al.'s user step
    (seen pairs weight 1, every pair the unobserved weight, L2 reg * (n + w * n_items) ** nu)."""
    x = toy_dataset.train.matrix.tocsr()
    model = get_model_class("ials").from_params(*x.shape, factors=4, iterations=6, regularization=0.003,
                                                unobserved_weight=0.3, frequency_scaling=1.0)
    model.fit(_Data(x))
    y = model.item_factors.double().numpy()
    users = [0, 5, 11]
    got = model.fold_in([_history_of(x, u) for u in users]).double().numpy()
    want = []
    for u in users:
        h = np.unique(x[u].indices)
        reg = 0.003 * (len(h) + 0.3 * x.shape[1])
        want.append(np.linalg.solve(y[h].T @ y[h] + 0.3 * y.T @ y + reg * np.eye(4), y[h].sum(0)))
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-5)
    trained = model.score_all(torch.tensor(users))
    for f, t in zip(model.score_histories([_history_of(x, u) for u in users]), trained, strict=True):
        assert np.corrcoef(f.numpy(), t.numpy())[0, 1] > 0.95  # near convergence one more step barely moves
