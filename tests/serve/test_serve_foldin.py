"""Fold-in through the HTTP API (issue 18): a POSTed interaction moves the user's next
recommendations, in the same request cycle, with both stores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from serve_helpers import write_run

from ncf.models import GMF, get_model_class

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from ncf.serve.app import create_app


def _items(resp) -> list:
    return [x["item"] for x in resp.json()["items"]]


@pytest.fixture(scope="module")
def gmf_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("gmf-foldin"), GMF, factors=6)


def test_unknown_user_gets_a_folded_vector_after_one_click(gmf_run, store):
    client = TestClient(create_app(gmf_run, store))
    pop = client.get("/v1/users/5000/recommendations?k=5").json()
    assert pop["fallback"] is True
    clicked = 1007
    assert client.post("/v1/users/5000/interactions", json={"item": clicked}).status_code == 201
    r = client.get("/v1/users/5000/recommendations?k=5")  # the next GET sees it
    body = r.json()
    assert r.status_code == 200 and body["fallback"] is False and body["user"] == 5000
    assert clicked not in _items(r)
    run_id = client.app.state.service.run_id
    vec, n = store.read_foldin(run_id, "5000")
    assert n == 1 and len(vec) == 6
    # the clicked item's neighbours (the service's own /similar) rank higher than in the popularity list
    nbrs = set(_items(client.get(f"/v1/items/{clicked}/similar?k=8")))
    assert len(nbrs & set(_items(r))) > len(nbrs & {x["item"] for x in pop["items"]})


def test_known_user_vector_moves_and_survives_a_restart(gmf_run, store_factory):
    first_store = store_factory()
    first = TestClient(create_app(gmf_run, first_store))
    before = first.get("/v1/users/110/recommendations?k=29").json()
    target = before["items"][-1]["item"]  # the user's least liked unseen item
    assert first.post("/v1/users/110/interactions", json={"item": target}).status_code == 201
    after = first.get("/v1/users/110/recommendations?k=29").json()
    assert after["fallback"] is False and target not in [x["item"] for x in after["items"]]
    s0 = {x["item"]: x["score"] for x in before["items"]}
    s1 = {x["item"]: x["score"] for x in after["items"]}
    assert any(abs(s0[i] - s1[i]) > 1e-4 for i in s1), "the known user's vector did not move"
    first_store.close()
    # a restarted service (a fresh store handle; the in-process store replays its journal and
    # has lost the vector, which the next GET recomputes from the recorded interactions)
    second = TestClient(create_app(gmf_run, store_factory()))
    again = second.get("/v1/users/110/recommendations?k=29").json()
    assert [x["item"] for x in again["items"]] == [x["item"] for x in after["items"]]
    np.testing.assert_allclose([x["score"] for x in again["items"]], [x["score"] for x in after["items"]],
                               rtol=1e-5, atol=1e-6)


def test_foldin_off_keeps_the_popularity_fallback(gmf_run, store):
    client = TestClient(create_app(gmf_run, store, foldin=False))
    client.post("/v1/users/6000/interactions", json={"item": 1003})
    assert client.get("/v1/users/6000/recommendations?k=3").json()["fallback"] is True


def test_item_based_model_scores_the_recorded_history(tmp_path, store, toy_dataset):
    """EASE: no stored vector, the recorded items are scored directly (``score_histories``)."""
    from ncf.checkpoint import save_model, save_run_data

    x = toy_dataset.train.matrix
    model = get_model_class("ease").from_params(*x.shape, l2=5.0)
    model.fit(toy_dataset)
    save_run_data(tmp_path, toy_dataset.train.user_map, toy_dataset.train.item_map, x, None)
    save_model(tmp_path, model, {"data": {"source": "synthetic"}})
    client = TestClient(create_app(tmp_path, store))
    # toy data: users like items 0-19 or 20-39; a new user clicking three of the second group
    for item in (20, 21, 22):
        assert client.post("/v1/users/777/interactions", json={"item": item}).status_code == 201
    body = client.get("/v1/users/777/recommendations?k=10").json()
    assert body["fallback"] is False
    assert all(20 <= x["item"] < 40 for x in body["items"])
    want = model.score_histories([np.array([20, 21, 22])])[0].numpy()
    np.testing.assert_allclose(body["items"][0]["score"], want[body["items"][0]["item"]], rtol=1e-5)


def test_newton_fold_in_solves_the_linearised_objective(gmf_run):
    """GMF scores are affine in the user vector: Newton's solution ranks the clicked items up,
    and the same history gives the same vector (seeded negatives)."""
    from ncf.recommend import Recommender
    from ncf.serve.foldin import newton_fold_in
    from ncf.serve.retrieval import make_ranker

    rec = Recommender.from_run(gmf_run)
    ranker = make_ranker(rec.model)
    ranker.bind(ranker.item_features())
    mean = ranker.user_vectors().mean(axis=0)
    base = ranker.score(mean)
    up = 0
    for item in range(10):
        u = newton_fold_in(ranker, np.array([item]), mean, prior=0.1)
        s = ranker.score(u)
        up += int((s > s[item]).sum()) < int((base > base[item]).sum()) or (s > s[item]).sum() == 0
    assert up >= 9
    hist = np.array([3, 7, 11])
    u = newton_fold_in(ranker, hist, mean, prior=0.1)
    np.testing.assert_array_equal(newton_fold_in(ranker, hist, mean, prior=0.1), u)
    # a stronger pull towards the start moves the vector less
    near = newton_fold_in(ranker, hist, mean, prior=10.0)
    assert np.linalg.norm(near - mean) < np.linalg.norm(u - mean)


# -- MF (Newton on [p_u ; b_u]) and the ensemble (its members' history scores, blended) ------

def _toy_run(name: str, data, directory, weights=None, **options):
    import ncf

    opts = {"epochs": 15, "patience": 0, "batch_size": 64, "lr": 0.01} if get_model_class(name).trainable else {}
    model = ncf.fit(name, data, progress=False, device="cpu", **{**opts, **options})
    if weights is not None:  # the ensemble's blend, set (validation may give one member all the weight)
        model.model._hparams["weights"] = list(weights)
    model.save(directory, overwrite=True)
    return model, directory


_TOY: dict = {}  # fitted once per session (the toy dataset is deterministic)


@pytest.fixture
def toy_runs(toy_dataset, tmp_path_factory):
    """MF and an ensemble of EASE and that MF, fitted on the planted-groups toy data
    (users like items 0-19 or 20-39)."""
    if not _TOY:
        base = tmp_path_factory.mktemp("toy-foldin")
        mf, mf_dir = _toy_run("mf", toy_dataset, base / "mf", factors=6, l2=1e-4)
        ens = _toy_run("ensemble", toy_dataset, base / "ensemble", members=[str(mf_dir), "ease"],
                       weights=[0.6, 0.4])
        _TOY.update({"mf": (mf, mf_dir), "ensemble": ens})
    return _TOY


def _second_group_visitor(client, user: int) -> dict:
    for item in (20, 21, 22):  # raw ids = indexes in the toy data
        assert client.post(f"/v1/users/{user}/interactions", json={"item": item}).status_code == 201
    return client.get(f"/v1/users/{user}/recommendations?k=10").json()


def test_mf_folds_a_new_visitor_in_by_newton(toy_runs, store):
    model, run = toy_runs["mf"]
    net = model.model
    client = TestClient(create_app(run, store))
    assert client.app.state.service.foldin.kind == "vector"
    assert client.get("/v1/users/9001/recommendations?k=10").json()["fallback"] is True
    body = _second_group_visitor(client, 9001)
    assert body["fallback"] is False
    items = [x["item"] for x in body["items"]]
    assert not {20, 21, 22} & set(items)
    assert sum(20 <= i < 40 for i in items) >= 9, items  # the clicks' group, not the popular items
    # the stored vector is [p_u ; b_u], and the slate is that vector scored like a trained row
    vec, n = store.read_foldin(client.app.state.service.run_id, "9001")
    assert n == 3 and len(vec) == net.item_emb.embedding_dim + 1
    hist = [model.recommender.item_map.index(i) for i in (20, 21, 22)]
    import torch

    want = net.score_histories([torch.tensor(hist)])[0].double().numpy()
    got = {x["item"]: x["score"] for x in body["items"]}
    for item, score in got.items():
        np.testing.assert_allclose(score, want[model.recommender.item_map.index(item)], rtol=1e-5, atol=1e-6)


def test_mf_fold_in_is_exact_newton_and_bounded():
    """MF.fold_in solves the BCE of the affine logit (the gradient at the solution is the prior's
    pull only), and a long history costs what its latest ``max_history`` items cost."""
    import torch

    from ncf.models.base import newton_fold_in

    torch.manual_seed(0)
    net = get_model_class("mf").from_params(30, 500, factors=4)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape) * 0.7)
    h = np.array([3, 17, 256])
    u = net.fold_in([torch.tensor(h)])[0].double().numpy()
    np.testing.assert_allclose(u, newton_fold_in(net, h, net.mean_user_vector().double().numpy()), rtol=1e-6)
    a, o = net.linear_terms(np.arange(500))
    logits = net.score_vectors(torch.tensor(u, dtype=torch.float32)[None])[0].double().numpy()
    np.testing.assert_allclose(logits, o + a @ u, rtol=1e-5, atol=1e-5)  # the affine form is the model's
    long = torch.arange(1000) % 500
    np.testing.assert_array_equal(net.fold_in([long], max_history=50)[0].numpy(),
                                  net.fold_in([long[-50:]], max_history=50)[0].numpy())


def test_mf_known_user_moves_and_survives_a_restart(toy_runs, store_factory):
    _, run = toy_runs["mf"]
    first_store = store_factory()
    first = TestClient(create_app(run, first_store))
    before = first.get("/v1/users/0/recommendations?k=20").json()  # user 0: the first group
    assert first.post("/v1/users/0/interactions", json={"item": 25}).status_code == 201
    after = first.get("/v1/users/0/recommendations?k=20").json()
    assert after["fallback"] is False and 25 not in [x["item"] for x in after["items"]]
    s0 = {x["item"]: x["score"] for x in before["items"]}
    s1 = {x["item"]: x["score"] for x in after["items"]}
    assert any(abs(s0[i] - s1[i]) > 1e-4 for i in set(s0) & set(s1)), "the known user's vector did not move"
    first_store.close()
    second = TestClient(create_app(run, store_factory()))
    again = second.get("/v1/users/0/recommendations?k=20").json()
    assert [x["item"] for x in again["items"]] == [x["item"] for x in after["items"]]


def test_ensemble_blends_its_members_history_scores(toy_runs, store):
    """Before fold-in, an ensemble run's new visitor stayed on the popularity list after any
    number of clicks (the ensemble had no history scoring); now the members' history scores
    are standardised and blended with the run's weights, as score_all blends their rows."""
    import torch

    from ncf.models.ensemble import zscore

    model, run = toy_runs["ensemble"]
    net = model.model
    assert net.weights == [0.6, 0.4]  # both members take part
    client = TestClient(create_app(run, store))
    assert client.app.state.service.foldin.kind == "history"
    body = _second_group_visitor(client, 9002)
    assert body["fallback"] is False
    items = [x["item"] for x in body["items"]]
    assert sum(20 <= i < 40 for i in items) >= 9, items
    hist = torch.tensor([model.recommender.item_map.index(i) for i in (20, 21, 22)])
    want = sum(w * zscore(m.score_histories([hist])) for w, m in zip(net.weights, net.members, strict=True))[0]
    for x in body["items"]:
        np.testing.assert_allclose(x["score"], float(want[model.recommender.item_map.index(x["item"])]),
                                   rtol=1e-5, atol=1e-5)
    # a known user's click moves their list too (not only filtered out)
    before = client.get("/v1/users/1/recommendations?k=10").json()
    client.post("/v1/users/1/interactions", json={"item": before["items"][0]["item"]})
    after = client.get("/v1/users/1/recommendations?k=10").json()
    assert after["fallback"] is False
    assert {x["item"]: x["score"] for x in after["items"]} != {x["item"]: x["score"] for x in before["items"][1:]}


def test_foldin_prior_comes_from_the_run_or_the_option(toy_runs, tmp_path, store_factory):
    """The Newton prior: RUN/foldin.json (chosen on validation by benchmarks/foldin_prior.py),
    overridden by ``foldin_prior``; a stronger pull keeps a new visitor nearer the mean user."""
    import shutil

    from ncf.errors import ConfigError

    model, src = toy_runs["mf"]
    run = tmp_path / "mf"
    shutil.copytree(src, run)
    assert TestClient(create_app(run, store_factory())).app.state.service.foldin.prior == 0.1  # the default
    (run / "foldin.json").write_text('{"prior": 30.0}')
    moved = {}
    for prior in (None, 0.01):
        store = store_factory()
        client = TestClient(create_app(run, store, foldin_prior=prior))
        assert client.app.state.service.foldin.prior == (30.0 if prior is None else prior)
        client.post("/v1/users/9100/interactions", json={"item": 21})
        vec, _ = store.read_foldin(client.app.state.service.run_id, "9100")
        moved[prior] = float(np.linalg.norm(vec - model.model.mean_user_vector().numpy()))
        store.close()
    assert moved[None] < 0.5 * moved[0.01], moved
    for bad in ('{"prior": -1}', '{"prior": "x"}', "[1]", "not json"):
        (run / "foldin.json").write_text(bad)
        with pytest.raises(ConfigError, match="foldin.json"):
            create_app(run, store_factory())
    with pytest.raises(ConfigError, match="fold-in-prior"):
        create_app(src, store_factory(), foldin_prior=0.0)
