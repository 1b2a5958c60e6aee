"""The contract every model in the registry keeps, parametrised over ``ncf.models.MODELS``:
a model added to the registry is tested here without a test file of its own.

Each model is fit through the Python front door (``ncf.fit``) on the planted toy dataset
(two user groups liking two disjoint item groups), then: score shapes and score/score_all
agreement, seen filtering, candidate subsets, the popularity fallback, a save/load round
trip with identical scores, and the same top-10 from the Python API, ``ncf recommend`` and
the HTTP service (ties included: ``pop`` scores tie by construction).

A model whose quick fit needs options (a member list, feature files) declares them in its
class attribute ``contract_options``; trainable models get a few epochs here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ncf
from ncf.models import MODELS, get_model_class

# models that rank by the user's own history only through popularity: no planted-group signal
NOT_PERSONAL = {"pop"}


def _options(name: str) -> dict:
    cls = get_model_class(name)
    opts = {"epochs": 15, "patience": 0, "batch_size": 64, "lr": 0.01} if cls.trainable else {}
    return {**opts, "device": "cpu", **getattr(cls, "contract_options", {})}


# each model is fit once per session (the toy dataset is deterministic)
_CACHE: dict[str, tuple] = {}


def _fit(name: str, toy_dataset, tmp_path_factory):
    if name not in _CACHE:
        model = ncf.fit(name, toy_dataset, progress=False, **_options(name))
        run = model.save(tmp_path_factory.mktemp(f"run-{name}"), overwrite=True)
        _CACHE[name] = (model, run)
    return _CACHE[name]


@pytest.fixture
def fit_model(toy_dataset, tmp_path_factory):
    def get(name):
        return _fit(name, toy_dataset, tmp_path_factory)
    return get


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scores_have_the_contract_shapes(name, fit_model):
    model, _ = fit_model(name)
    net = model.model
    users = torch.tensor([0, 3, 7])
    full = net.score_all(users)
    assert full.shape == (3, net.n_items)
    assert torch.isfinite(full).any(dim=1).all()
    items = torch.tensor([1, 5, 30])
    pairs = net.score(users, items)
    assert pairs.shape == (3,)
    torch.testing.assert_close(pairs.double(), full[torch.arange(3), items].double(), atol=1e-5, rtol=1e-5)
    one = net.score(torch.tensor([5]), torch.tensor([2]))
    assert one.shape == (1,)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recommendations_filter_seen_and_respect_candidates(name, fit_model, toy_dataset):
    model, _ = fit_model(name)
    raw_users = toy_dataset.train.user_map.raw_ids[:6]
    recs = model.recommend(raw_users, k=10)
    assert {"user", "rank", "item", "score", "fallback"} <= set(recs.columns)
    assert (recs.groupby("user").size() == 10).all() and not recs["fallback"].any()
    for u in raw_users:
        seen = set(toy_dataset.train.item_map.raws(
            toy_dataset.train.matrix[toy_dataset.train.user_map.index(u)].indices))
        got = recs.loc[recs.user == u]
        assert not seen & set(got["item"]), f"{name} recommended seen items to user {u}"
        assert got["rank"].tolist() == list(range(1, 11))
        assert np.all(np.diff(got["score"].to_numpy()) <= 1e-9), "slate not ordered by score"
    # filter_seen=False: seen items may come back (all items are candidates)
    everything = model.recommend(raw_users[:1], k=toy_dataset.n_items, filter_seen=False)
    assert len(everything) == toy_dataset.n_items
    # a candidate subset
    subset = toy_dataset.train.item_map.raw_ids[::3]
    sub = model.recommend(raw_users[:2], k=5, items=subset, filter_seen=False)
    assert set(sub["item"]) <= set(subset)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unknown_users_get_the_marked_popularity_fallback(name, fit_model):
    model, _ = fit_model(name)
    recs = model.recommend(["nobody-at-all"], k=5)
    assert recs["fallback"].all() and len(recs) == 5
    pop = model.recommender.popularity
    assert recs["score"].tolist() == sorted(pop, reverse=True)[:5]


@pytest.mark.parametrize("name", sorted(set(MODELS) - NOT_PERSONAL))
def test_learns_the_planted_groups(name, fit_model, toy_dataset, own_group_auc):
    model, _ = fit_model(name)
    users = np.arange(toy_dataset.n_users)
    scores = model.model.score_all(torch.as_tensor(users)).double().numpy()
    scores = np.where(np.isfinite(scores), scores, -1e9)
    assert own_group_auc(scores, toy_dataset, users) > 0.75


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_load_round_trip_gives_identical_scores(name, fit_model):
    model, run = fit_model(name)
    back = ncf.load(run)
    assert back.name == name and back.item_ids == model.item_ids and back.user_ids == model.user_ids
    users = torch.arange(model.model.n_users)
    torch.testing.assert_close(back.model.score_all(users), model.model.score_all(users), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_top10_from_python_cli_and_service(name, fit_model, toy_dataset):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ncf.cli import app
    from ncf.serve.app import create_app

    model, run = fit_model(name)
    client = TestClient(create_app(run))
    for user in toy_dataset.train.user_map.raw_ids[:4]:
        py = model.recommend(user, k=10)["item"].tolist()
        res = CliRunner().invoke(app, ["recommend", str(run), "--user", str(user), "-k", "10", "--json"])
        assert res.exit_code == 0, (res.output, res.exception)
        cli = [it["item"] for it in json.loads(res.output)["items"]]
        http = client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
        assert http.status_code == 200, http.text
        svc = [it["item"] for it in http.json()["items"]]
        assert py == cli == svc, (name, user, py, cli, svc)
