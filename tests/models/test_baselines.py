"""Baselines (pop, itemknn, ease, bpr, ials): the Scorer contract, checks against slow
references, checkpoints, the CLI, and the protocol check on the NCF ML-1M split."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ncf.checkpoint import CheckpointError, load_model, load_run_maps, load_train_matrix, save_model
from ncf.config import TrainConfig
from ncf.eval.evaluator import evaluate
from ncf.models import get_model_class
from ncf.models.baselines import ease_weights
from ncf.train.trainer import Trainer

FITTED = {"pop": {}, "itemknn": {"k": 5, "shrink": 2.0}, "ease": {"l2": 5.0},
          "ials": {"factors": 4, "iterations": 8, "regularization": 0.05, "alpha": 5.0, "unobserved_weight": 0.0,
                   "frequency_scaling": 0.0},
          # Rendle et al.'s frequency-scaled regulariser: ncf's own solver instead of implicit's
          "ials:scaled": {"factors": 4, "iterations": 8, "regularization": 0.002, "unobserved_weight": 0.3,
                          "frequency_scaling": 1.0}}
ALL = {**FITTED, "bpr": {"factors": 4}}


class _Data:
    """The smallest object ``fit`` needs: ``.train.matrix``."""

    def __init__(self, matrix):
        self.train = type("T", (), {"matrix": sp.csr_matrix(matrix)})()


def fitted(name, dataset, **extra):
    cls = get_model_class(name.split(":")[0])
    params = {**ALL[name], **extra}
    m = cls.from_params(dataset.n_users if hasattr(dataset, "n_users") else dataset.train.matrix.shape[0],
                        dataset.n_items if hasattr(dataset, "n_items") else dataset.train.matrix.shape[1],
                        **params)
    if name == "bpr":
        torch.manual_seed(0)
        # one thread: on a busy 2-core machine torch's threaded logsigmoid takes ~10 ms a call
        # on a 64-row batch (1.6 us on one thread); restored afterwards
        threads = torch.get_num_threads()
        cfg = TrainConfig(model="bpr", loss="bpr", epochs=20, batch_size=64, lr=0.02, patience=0, device="cpu",
                          factors=params["factors"], threads=1)
        try:
            Trainer(m, dataset, cfg, None, progress=False).fit()
        finally:
            torch.set_num_threads(threads)
    else:
        m.fit(dataset, TrainConfig(model=cls.name, seed=0))
    return m


@pytest.mark.parametrize("name", sorted(ALL))
def test_contract_shapes_and_agreement(name, toy_dataset):
    m = fitted(name, toy_dataset)
    users = torch.tensor([0, 3, 7, 59])
    full = m.score_all(users)
    assert full.shape == (4, toy_dataset.n_items)
    pairs = m.score(users.repeat_interleave(toy_dataset.n_items),
                    torch.arange(toy_dataset.n_items).repeat(4)).view(4, -1)
    assert torch.allclose(full, pairs, atol=1e-5)
    one = m.score(torch.tensor([5]), torch.tensor([2]))
    assert one.shape == (1,) and torch.isclose(one[0], m.score_all(torch.tensor([5]))[0, 2], atol=1e-5)
    assert not any(p.requires_grad for p in m.parameters()) or m.trainable


@pytest.mark.parametrize("name", sorted(ALL))
def test_checkpoint_round_trip(name, toy_dataset, tmp_path):
    m = fitted(name, toy_dataset)
    save_model(tmp_path, m)
    back = load_model(tmp_path)
    assert type(back) is type(m) and back.hparams() == m.hparams()
    users = torch.arange(toy_dataset.n_users)
    assert torch.equal(m.score_all(users), back.score_all(users))


@pytest.mark.parametrize("name", ["itemknn", "ease", "ials", "ials:scaled", "bpr"])
def test_learns_planted_groups(name, toy_dataset):
    """Own-group items must outscore other-group items for almost every user (AUC > 0.9)."""
    m = fitted(name, toy_dataset)
    scores = m.score_all(torch.arange(toy_dataset.n_users)).numpy()
    group_of_item = np.array(toy_dataset.train.item_map.raw_ids) // 20
    aucs = []
    for u in range(toy_dataset.n_users):
        g = int(toy_dataset.train.user_map.raw(u)) % 2
        own, other = scores[u, group_of_item == g], scores[u, group_of_item != g]
        aucs.append((own[:, None] > other[None, :]).mean())
    assert np.mean(aucs) > 0.9, np.mean(aucs)


def _random_matrix(n_users=15, n_items=12, density=0.3, seed=1):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[:, -1] = 0  # an item nobody saw: similarity 0, no division by zero
    return x


def test_popularity_is_training_counts():
    x = _random_matrix()
    m = fitted("pop", _Data(x))
    assert np.array_equal(m.score_all(torch.tensor([0, 4])).numpy(), np.tile(x.sum(0), (2, 1)))


@pytest.mark.parametrize("k,shrink", [(3, 0.0), (4, 5.0), (50, 1.0)])
def test_itemknn_matches_slow_reference(k, shrink):
    x = _random_matrix()
    n_items = x.shape[1]
    m = fitted("itemknn", _Data(x), k=k, shrink=shrink)
    # plain-Python reference: shrunk cosine, each target keeps its k most similar items
    s_ref = np.zeros((n_items, n_items))
    for i in range(n_items):
        sims = []
        for j in range(n_items):
            if j == i:
                continue
            co = float((x[:, i] * x[:, j]).sum())
            den = np.sqrt(x[:, i].sum()) * np.sqrt(x[:, j].sum()) + shrink
            sims.append((co / den if den > 0 else 0.0, j))
        sims.sort(key=lambda t: (-t[0], t[1]))
        for sim, j in sims[:k]:
            s_ref[j, i] = sim
    expected = x @ s_ref
    got = m.score_all(torch.arange(x.shape[0])).numpy()
    assert np.allclose(got, expected, atol=1e-5)


def test_ease_satisfies_its_optimality_conditions():
    """min ||X - XB||² + λ||B||² s.t. diag(B) = 0  <=>  diag(B) = 0 and the off-diagonal of
    (XᵀX + λI) B - XᵀX is zero (the Lagrange multipliers sit on the diagonal only)."""
    x = _random_matrix()
    lam = 3.0
    b = ease_weights(sp.csr_matrix(x), lam).astype(np.float64)
    g = x.T.astype(np.float64) @ x
    resid = (g + lam * np.eye(len(g))) @ b - g
    off = resid - np.diag(np.diag(resid))
    assert np.abs(np.diag(b)).max() == 0
    assert np.abs(off).max() < 1e-4
    m = fitted("ease", _Data(x), l2=lam)
    assert np.allclose(m.score_all(torch.arange(x.shape[0])).numpy(), x @ b, atol=1e-4)


def test_ials_is_seeded(toy_dataset):
    a = fitted("ials", toy_dataset)
    b = fitted("ials", toy_dataset)
    assert torch.equal(a.item_factors, b.item_factors)
    c = get_model_class("ials").from_params(toy_dataset.n_users, toy_dataset.n_items, **ALL["ials"])
    c.fit(toy_dataset, TrainConfig(model="ials", seed=1))
    assert not torch.equal(a.item_factors, c.item_factors)


def _ials_objective(x, users, items, w, reg_u, reg_i):
    """Rendle et al.'s iALS loss, written out densely (the reference for the solver)."""
    s = users @ items.T
    return (((s - 1) ** 2)[x > 0].sum() + w * (s ** 2).sum()
            + (reg_u[:, None] * users ** 2).sum() + (reg_i[:, None] * items ** 2).sum())


def test_als_sweep_solves_each_rows_normal_equations():
    from ncf.models.ials import als_sweep, row_regularization

    x = sp.csr_matrix(_random_matrix(n_users=30, n_items=20, density=0.25))
    rng = np.random.default_rng(3)
    items = torch.as_tensor(rng.normal(size=(20, 5)), dtype=torch.float64)
    start = torch.as_tensor(rng.normal(size=(30, 5)), dtype=torch.float64)
    reg = row_regularization(np.diff(x.indptr), 20, 0.05, 0.3, 1.0).double()
    y = items.numpy()
    want = np.stack([np.linalg.solve(y[x[r].indices].T @ y[x[r].indices] + 0.3 * y.T @ y
                                     + float(reg[r]) * np.eye(5), y[x[r].indices].sum(0)) for r in range(30)])
    # conjugate gradients reach the solution in at most `factors` steps (in exact arithmetic)
    np.testing.assert_allclose(als_sweep(x, items, start, 0.3, reg, steps=5).numpy(), want, rtol=1e-6, atol=1e-8)
    assert not np.allclose(als_sweep(x, items, start, 0.3, reg, steps=1).numpy(), want, atol=1e-3)
    # the float32 sweep of a fit agrees too
    got = als_sweep(x, items.float(), start.float(), 0.3, reg.float(), steps=5).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_scaled_ials_sweeps_lower_rendles_objective():
    from ncf.models.ials import als_sweep, row_regularization

    x = _random_matrix(n_users=25, n_items=18, density=0.3)
    xs, xt = sp.csr_matrix(x), sp.csr_matrix(x.T)
    rng = np.random.default_rng(0)
    users = torch.as_tensor(rng.normal(scale=0.1, size=(25, 6)))
    items = torch.as_tensor(rng.normal(scale=0.1, size=(18, 6)))
    reg_u = row_regularization(x.sum(1), 18, 0.01, 0.2, 1.0).double()
    reg_i = row_regularization(x.sum(0), 25, 0.01, 0.2, 1.0).double()
    losses = [_ials_objective(x, users, items, 0.2, reg_u, reg_i)]
    for _ in range(6):
        users = als_sweep(xs, items, users, 0.2, reg_u, steps=6)
        losses.append(_ials_objective(x, users, items, 0.2, reg_u, reg_i))
        items = als_sweep(xt, users, items, 0.2, reg_i, steps=6)
        losses.append(_ials_objective(x, users, items, 0.2, reg_u, reg_i))
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name,params,match", [
    ("itemknn", {"k": 0}, "k must be"),
    ("itemknn", {"shrink": -1}, "shrink"),
    ("ease", {"l2": 0}, "l2 must be > 0"),
    ("ials", {"alpha": -1.0}, "alpha"),
    ("ials", {"frequency_scaling": 1.0, "unobserved_weight": 0.0}, "needs unobserved_weight"),
    ("ials", {"frequency_scaling": -1.0, "unobserved_weight": 0.3}, "frequency_scaling must be >= 0"),
    ("bpr", {"factors": 0}, "factors"),
    ("ease", {"lambda": 3}, "unknown parameter"),
])
def test_bad_hyperparameters_are_refused(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_model_class(name).from_params(5, 4, **params)


def test_corrupt_history_in_checkpoint_is_named(toy_dataset, tmp_path):
    m = fitted("ease", toy_dataset)
    save_model(tmp_path, m)
    t = load_file(str(tmp_path / "model.safetensors"))
    t["hist_indices"][0] = toy_dataset.n_items + 7
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors.*outside"):
        load_model(tmp_path)


# -- the command line: train, evaluate, recommend for each baseline -----------------------

@pytest.fixture
def ratings_file(tmp_path):
    """A synthetic tab-separated ratings file (two taste groups, timestamps)."""
    rng = np.random.default_rng(3)
    lines = []
    for u in range(1, 41):
        pool = np.arange(1, 16) if u % 2 else np.arange(16, 31)
        for t, i in enumerate(rng.choice(pool, size=9, replace=False)):
            lines.append(f"{u}\t{i}\t5\t{1000 + t}")
    path = tmp_path / "ratings.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(args):
    from ncf.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


@pytest.mark.parametrize("name", sorted(ALL))
def test_cli_train_evaluate_recommend(name, ratings_file, tmp_path):
    out = tmp_path / "run"
    from ncf.models import get_model_class

    params = [a for k, v in FITTED.get(name, {}).items() for a in ("--param", f"{k}={v}")]
    name = name.split(":")[0]  # a variant: the model's name with other parameters
    cls = get_model_class(name)  # only the flags that apply: the others are refused
    params += ["--epochs", "2"] if cls.trainable else []
    params += ["--factors", "4"] if "factors" in cls.config_fields else []
    _cli(["train", "--dataset", str(ratings_file), "--model", name, "--out", str(out), "--quiet", *params])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == name
    if name == "bpr":
        assert cfg["train"]["loss"] == "bpr"  # BPR-MF trains with the pairwise loss by default
    for protocol in ("sampled", "full"):
        res = json.loads(_cli(["evaluate", str(out), "--protocol", protocol, "--json"]))
        assert 0.0 <= res["metrics"]["hr@10"] <= 1.0
    rec = json.loads(_cli(["recommend", str(out), "--user", "1", "-k", "5", "--json"]))
    assert len(rec["items"]) == 5 and not rec["fallback"]
    users, items = load_run_maps(out)
    train = load_train_matrix(out)
    seen = set(items.raws(train[users.index(1)].indices))
    assert seen and not seen & {it["item"] for it in rec["items"]}


def test_cli_bpr_keeps_an_explicit_loss(ratings_file, tmp_path):
    out = tmp_path / "run"
    _cli(["train", "--dataset", str(ratings_file), "--model", "bpr", "--loss", "bce", "--out", str(out),
          "--epochs", "1", "--quiet"])
    assert json.loads((out / "config.json").read_text())["train"]["loss"] == "bce"
    out2 = tmp_path / "gmf"
    _cli(["train", "--dataset", str(ratings_file), "--model", "gmf", "--out", str(out2), "--epochs", "1", "--quiet"])
    assert json.loads((out2 / "config.json").read_text())["train"]["loss"] == "bce"


# -- real data --------------------------------------------------------------------------

def test_most_popular_reproduces_the_published_figure(ncf_ml1m):
    """Most-popular on the NCF ML-1M split: 0.453 sampled HR@10 (Dacrema et al. 2019). Being
    within 0.01 checks the protocol: candidates, the duplicated positives, pessimistic ties."""
    m = fitted("pop", ncf_ml1m)
    res = evaluate(m, ncf_ml1m.test, "sampled")
    assert abs(res["hr@10"] - 0.453) <= 0.01, res
    assert abs(res["ndcg@10"] - 0.254) <= 0.01, res


def test_personalised_baselines_beat_popularity_on_ml100k(ml100k):
    pop = evaluate(fitted("pop", ml100k), ml100k.valid, "sampled")["hr@10"]
    for name, params in [("itemknn", {"k": 100, "shrink": 10.0}), ("ease", {"l2": 200.0})]:
        hr = evaluate(fitted(name, ml100k, **params), ml100k.valid, "sampled")["hr@10"]
        assert hr > pop + 0.05, (name, hr, pop)


def _dense_item_knn(x, k, shrink):
    """The former dense implementation (every target's full similarity column, a stable argsort),
    kept as the reference of the block-sparse one."""
    n_items = x.shape[1]
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel().astype(np.float64))
    co = (x.T @ x).toarray().astype(np.float64)
    den = norms[:, None] * norms[None, :] + shrink
    sim = np.divide(co, den, out=np.zeros_like(co), where=den > 0)
    sim[np.diag_indices(n_items)] = -np.inf
    order = np.argsort(-sim, axis=0, kind="stable")[:k]
    sims = np.take_along_axis(sim, order, axis=0).T.astype(np.float32)
    sims[~np.isfinite(sims)] = 0.0
    return order.T, sims


def _ml100k_matrix(ml100k_dir):
    d = np.loadtxt(ml100k_dir / "u.data", dtype=np.int64)
    return sp.csr_matrix((np.ones(len(d), np.float32), (d[:, 0] - 1, d[:, 1] - 1)))


@pytest.mark.parametrize("k,shrink", [(20, 0.0), (100, 10.0), (1681, 5.0)])
def test_itemknn_equals_the_dense_implementation_on_ml100k(k, shrink, ml100k_dir):
    from ncf.models.baselines import item_knn

    x = _ml100k_matrix(ml100k_dir)
    nbr, sims = item_knn(x, k, shrink, block=300)
    ref_nbr, ref_sims = _dense_item_knn(x, k, shrink)
    assert np.array_equal(sims, ref_sims)
    # the neighbour lists agree wherever the weight is not 0 (zero-weight picks do not score)
    assert np.array_equal(np.where(sims > 0, nbr, -1), np.where(ref_sims > 0, ref_nbr, -1))
    m = fitted("itemknn", _Data(x), k=k, shrink=shrink)
    s_ref = np.zeros((x.shape[1], x.shape[1]), dtype=np.float32)
    s_ref[ref_nbr.ravel(), np.repeat(np.arange(x.shape[1]), ref_nbr.shape[1])] = ref_sims.ravel()
    users = torch.arange(0, x.shape[0], 7)
    got = m.score_all(users).numpy()
    expected = x[users.numpy()] @ s_ref
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    seen = x[users.numpy()].toarray() > 0
    top = lambda s: np.argsort(-np.where(seen, -np.inf, s), axis=1, kind="stable")[:, :10]  # noqa: E731
    assert (top(got) == top(expected)).mean() > 0.99


@pytest.mark.parametrize("l2", [10.0, 500.0])
def test_ease_float32_agrees_with_float64_on_ml100k(l2, ml100k_dir):
    x = _ml100k_matrix(ml100k_dir)
    b32 = ease_weights(x, l2)
    b64 = ease_weights(x, l2, dtype=np.float64)
    assert b32.dtype == np.float32 and b64.dtype == np.float64
    # the float64 path against a plain inverse
    g = (x.T @ x).toarray().astype(np.float64) + l2 * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    ref = -p / np.diag(p)[None, :]
    ref[np.diag_indices_from(ref)] = 0.0
    assert np.abs(b64 - ref).max() < 1e-10
    s32, s64 = x @ b32, x @ b64
    assert np.abs(s32 - s64).max() / np.abs(s64).max() < 1e-4
    seen = x.toarray() > 0
    top32 = np.argsort(-np.where(seen, -np.inf, s32), axis=1)[:, :10]
    top64 = np.argsort(-np.where(seen, -np.inf, s64), axis=1)[:, :10]
    assert np.mean([set(a) == set(b) for a, b in zip(top32, top64, strict=True)]) > 0.99


def test_ease_weights_keeps_one_dense_matrix():
    """The inverse is computed in the Gram matrix's own memory (no second I x I array)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((400, 1200)) < 0.05).astype(np.float32))
    ease_weights(x[:, :10], 5.0)  # imports done before measuring
    tracemalloc.start()
    ease_weights(x, 5.0, block=64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.5 * 4 * 1200**2, peak / (4 * 1200**2)
