"""Serving with the sequence (issue 21): a sequence model scores a user from their training
sequence followed by what was recorded since, in recording order, in both stores."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from fastapi.testclient import TestClient

import ncf
from ncf.serve.app import create_app


def _expected(model, user_index: int, recorded: list[int], k: int) -> list:
    rec = model.recommender
    hist = torch.cat([rec.model.training_history(user_index), torch.tensor(recorded, dtype=torch.int64)])
    scores = rec.model.score_histories([hist])[0].double().numpy()
    exclude = np.zeros(rec.n_items, bool)
    exclude[rec.seen_items(user_index)] = True
    exclude[recorded] = True
    return [it["item"] for it in rec.slate(scores, exclude, k)]


def test_recorded_clicks_extend_the_sequence_in_order(toy_dataset, tmp_path, store):
    model = ncf.fit("sasrec", toy_dataset, progress=False, epochs=10, device="cpu")
    run = model.save(tmp_path / "sasrec")
    rec = model.recommender
    user = rec.user_map.raw_ids[3]
    u = rec.user_map.index(user)
    unseen = [i for i in range(rec.n_items) if i not in set(rec.seen_items(u).tolist())]
    # two items whose order changes the slate, recorded larger raw id first (so that a store
    # returning its events sorted would give the other order)
    a, b = next((a, b) for a, b in itertools.permutations(unseen, 2)
                if str(rec.item_map.raw(a)) > str(rec.item_map.raw(b))
                and _expected(model, u, [a, b], 10) != _expected(model, u, [b, a], 10))
    client = TestClient(create_app(run, store))
    before = [x["item"] for x in client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()["items"]]
    assert before == _expected(model, u, [], 10)  # the training sequence alone, as the model scores it
    for i in (a, b):
        r = client.post(f"/v1/users/{user}/interactions", json={"item": rec.item_map.raw(i)})
        assert r.status_code == 201, r.text
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
    assert not body["fallback"]
    assert [x["item"] for x in body["items"]] == _expected(model, u, [a, b], 10)


def test_a_new_visitor_is_scored_from_their_clicks(toy_dataset, tmp_path, store):
    model = ncf.fit("sasrec", toy_dataset, progress=False, epochs=10, device="cpu")
    run = model.save(tmp_path / "sasrec")
    client = TestClient(create_app(run, store))
    first = client.get("/v1/users/99999/recommendations", params={"k": 5}).json()
    assert first["fallback"]
    item = model.recommender.item_map.raw_ids[7]
    assert client.post("/v1/users/99999/interactions", json={"item": item}).status_code == 201
    after = client.get("/v1/users/99999/recommendations", params={"k": 5}).json()
    scores = model.model.score_histories([torch.tensor([7])])[0].double().numpy()
    exclude = np.zeros(model.recommender.n_items, bool)
    exclude[7] = True
    assert not after["fallback"]
    assert [x["item"] for x in after["items"]] == [x["item"] for x in model.recommender.slate(scores, exclude, 5)]
