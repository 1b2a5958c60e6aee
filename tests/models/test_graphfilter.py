"""GF-CF and BSPM against dense step-by-step references on small matrices, and the memory
refusal shared by the fitted models (nothing allocated before the estimate is checked)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import ncf.models.base as base
from ncf.errors import ConfigError
from ncf.models import get_model_class


class _Data:
    def __init__(self, matrix):
        self.train = type("T", (), {"matrix": sp.csr_matrix(matrix)})()


def _matrix(n_users=40, n_items=30, density=0.15, seed=3):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float64)
    x[:, -1] = 0  # an item nobody saw: degree 0
    x[-1] = 0  # a user with no training item
    return x


def _fit(name, x, **params):
    m = get_model_class(name).from_params(*x.shape, **params)
    return m.fit(_Data(x))


def _dense_filters(x, k):
    """(A, P) in float64: R̃ᵀR̃ and D_I^-1/2 V_k V_kᵀ D_I^1/2 from a full SVD."""
    du, di = x.sum(1), x.sum(0)
    inv_u = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1e-300)), 0.0)
    inv_i = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1e-300)), 0.0)
    r = inv_u[:, None] * x * inv_i[None, :]
    _, s, vt = np.linalg.svd(r)
    v = vt[:k].T
    return r.T @ r, np.diag(inv_i) @ v @ v.T @ np.diag(np.sqrt(di))


def _scores(m, n_users):
    return m.score_all(torch.arange(n_users)).double().numpy()


@pytest.mark.parametrize("alpha,k", [(0.3, 8), (0.0, 8), (1.0, 0), (0.5, 25)])
def test_gfcf_equals_the_dense_formula(alpha, k):
    x = _matrix()
    a, p = _dense_filters(x, k)
    expected = x @ a + alpha * x @ p
    got = _scores(_fit("gfcf", x, alpha=alpha, factors=k), len(x))
    np.testing.assert_allclose(got, expected, atol=2e-5)


def _rk4_38(f, y, h):
    """torchdiffeq's ``rk4`` step (the 3/8 rule), written out."""
    k1 = f(y)
    k2 = f(y + h * k1 / 3)
    k3 = f(y + h * (k2 - k1 / 3))
    k4 = f(y + h * (k1 - k2 + k3))
    return y + h * (k1 + 3 * (k2 + k3) + k4) / 8


def _euler(f, y, h):
    return y + h * f(y)


def _bspm_reference(x, params):
    """The reference code's order on dense float64 matrices, step by step."""
    a, p = _dense_filters(x, params["factors"])
    solvers = {"euler": _euler, "rk4": _rk4_38}
    ideal = params["ideal_weight"] * (x @ p)
    outs = []
    y = x.copy()
    h = params["blur_time"] / params["blur_steps"]
    for _ in range(params["blur_steps"]):
        y = solvers[params["blur_solver"]](lambda z: z @ a - z, y, h)
        outs.append(y)
    if params["early_merge"]:
        y = y + ideal
    h = params["sharpen_time"] / params["sharpen_steps"]
    for _ in range(params["sharpen_steps"]):
        y = solvers[params["sharpen_solver"]](lambda z: -(z @ a), y, h)
        outs.append(y)
    if params["point_combination"]:
        y = np.mean(outs, axis=0)
    return y if params["early_merge"] else y + ideal


BSPM_CASES = [
    {},  # the Gowalla defaults (factors clipped to the matrix)
    {"blur_steps": 3, "blur_time": 1.5, "blur_solver": "rk4", "sharpen_solver": "euler", "sharpen_steps": 2},
    {"early_merge": False, "ideal_weight": 0.5, "factors": 6},
    {"point_combination": True, "sharpen_steps": 2, "sharpen_time": 1.2, "factors": 10},
    {"ideal_weight": 0.0},
]


@pytest.mark.parametrize("params", BSPM_CASES)
def test_bspm_equals_a_dense_step_by_step_reference(params):
    x = _matrix()
    cls = get_model_class("bspm")
    full = {**cls.params, "factors": 12, **params}
    expected = _bspm_reference(x, full)
    got = _scores(_fit("bspm", x, **full), len(x))
    np.testing.assert_allclose(got, expected, atol=5e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["gfcf", "bspm"])
def test_histories_score_like_the_training_rows(name):
    x = _matrix()
    m = _fit(name, x, factors=6)
    users = [0, 5, 39]
    hist = [torch.as_tensor(np.flatnonzero(x[u])) for u in users]
    torch.testing.assert_close(m.score_histories(hist), m.score_all(torch.tensor(users)), rtol=1e-5, atol=1e-5)


def test_score_all_blocks_agree():
    x = _matrix()
    m = _fit("bspm", x, factors=6)
    whole = m.score_all(torch.arange(len(x)))
    m.block = 7
    torch.testing.assert_close(m.score_all(torch.arange(len(x))), whole, rtol=1e-6, atol=1e-6)


def test_truncated_svd_matches_a_dense_one_on_a_larger_matrix(monkeypatch):
    """Above the dense-SVD limit the vectors come from svds: same filter as a full SVD."""
    import ncf.models.graphfilter as gf

    rng = np.random.default_rng(0)
    x = (rng.random((120, 90)) < 0.08).astype(np.float64)
    a, p = _dense_filters(x, 15)
    monkeypatch.setattr(gf, "DENSE_SVD_LIMIT", 10)
    got = _scores(_fit("gfcf", x, alpha=1.0, factors=15), len(x))
    np.testing.assert_allclose(got, x @ a + x @ p, atol=1e-4)


@pytest.mark.parametrize("name,params", [("gfcf", {}), ("bspm", {}), ("ease", {}), ("itemknn", {})])
def test_fit_refuses_before_allocating_when_memory_is_short(name, params, monkeypatch):
    x = _matrix()
    m = get_model_class(name).from_params(*x.shape, **params)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    estimate = type(m).memory_estimate(*x.shape, int(x.sum()), m.hparams())
    monkeypatch.setattr(base, "available_memory", lambda: 1000)
    with pytest.raises(ConfigError, match=rf"{name}: the fit needs about {estimate / 2**30:.1f} GB of memory, "
                                          r"0\.0 GB is available"):
        m.fit(_Data(x))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the refused fit changed the model's state"
    monkeypatch.setattr(base, "available_memory", lambda: None)  # unknown: no refusal
    m.fit(_Data(x))


def test_ease_refusal_advises_the_sparse_models(monkeypatch):
    monkeypatch.setattr(base, "available_memory", lambda: 2**30)
    cls = get_model_class("ease")
    assert cls.memory_estimate(30_000, 41_000, 800_000, {}) > 4 * 41_000**2
    m = cls.from_params(30_000, 41_000)
    rng = np.random.default_rng(0)
    pairs = (rng.integers(0, 30_000, 100_000), rng.integers(0, 41_000, 100_000))
    data = _Data(sp.csr_matrix((np.ones(100_000, np.float32), pairs), shape=(30_000, 41_000)))
    with pytest.raises(ConfigError, match="use itemknn or gfcf"):
        m.fit(data)


def test_graph_filter_parameters_are_checked():
    for name, params, msg in [("gfcf", {"alpha": -1}, "alpha"), ("gfcf", {"factors": -2}, "factors"),
                              ("bspm", {"blur_solver": "dopri5"}, "blur_solver"),
                              ("bspm", {"sharpen_steps": 0}, "sharpen_steps"),
                              ("bspm", {"ideal_weight": -0.1}, "ideal_weight")]:
        with pytest.raises(ConfigError, match=msg):
            get_model_class(name).from_params(5, 5, **params)
