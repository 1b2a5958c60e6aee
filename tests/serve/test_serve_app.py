"""The HTTP API, run against both stores (``store`` / ``store_factory`` fixtures)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from serve_helpers import write_run

from ncf.recommend import Recommender

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient

from ncf.serve.app import create_app


@pytest.fixture
def client(neumf_run, store):
    return TestClient(create_app(neumf_run, store))


@pytest.fixture
def plain_client(neumf_run, store):
    """Without fold-in: recorded interactions only filter (the fold-in tests: test_serve_foldin.py)."""
    return TestClient(create_app(neumf_run, store, foldin=False))


@pytest.fixture(scope="module")
def reference(neumf_run):
    return Recommender.from_run(neumf_run)


def _items(resp) -> list:
    return [x["item"] for x in resp.json()["items"]]


def test_recommendations_are_the_models(client, reference):
    for user in reference.user_map.raw_ids:
        r = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
        assert r.status_code == 200
        body = r.json()
        want = reference.recommend(user, 5)
        assert body["user"] == user and body["fallback"] is False
        assert _items(r) == [x["item"] for x in want.items]
        np.testing.assert_allclose([x["score"] for x in body["items"]], [x["score"] for x in want.items], rtol=1e-5)
        seen = set(reference.item_map.raws(reference.seen_items(reference.user_map.index(user))))
        assert not seen & set(_items(r))
        assert body["items"][0]["title"] == f"Movie {body['items'][0]['item']}"


def test_large_k_returns_every_unseen_item(client, reference):
    r = client.get("/v1/users/105/recommendations", params={"k": 1000})
    n_seen = len(reference.seen_items(reference.user_map.index(105)))
    assert r.status_code == 200 and len(r.json()["items"]) == reference.n_items - n_seen


def test_interaction_excluded_next_time(plain_client):
    client = plain_client
    before = _items(client.get("/v1/users/107/recommendations?k=3"))
    r = client.post("/v1/users/107/interactions", json={"item": before[0]})
    assert r.status_code == 201 and r.json() == {"user": 107, "item": before[0], "stored": True}
    r = client.post("/v1/users/107/interactions", json={"item": str(before[1])})  # "1012" spells 1012 too
    assert r.status_code == 201 and r.json()["item"] == before[1]
    after = _items(client.get("/v1/users/107/recommendations?k=3"))
    assert before[0] not in after and before[1] not in after and after[0] == before[2]


def test_unknown_user_gets_popularity_flagged(plain_client, reference):
    client = plain_client
    r = client.get("/v1/users/99999/recommendations?k=4")
    body = r.json()
    assert r.status_code == 200 and body["fallback"] is True and body["user"] == 99999
    assert _items(r) == [x["item"] for x in reference.popular(4)]
    client.post("/v1/users/99999/interactions", json={"item": _items(r)[0]})
    again = _items(client.get("/v1/users/99999/recommendations?k=4"))
    assert again[0] == _items(r)[1] and _items(r)[0] not in again


def test_service_restart_keeps_interactions(neumf_run, store_factory):
    first = TestClient(create_app(neumf_run, store_factory()))
    top = _items(first.get("/v1/users/110/recommendations?k=2"))
    assert first.post("/v1/users/110/interactions", json={"item": top[0]}).status_code == 201
    assert first.post("/v1/users/555/interactions", json={"item": top[0]}).status_code == 201
    restarted = TestClient(create_app(neumf_run, store_factory()))  # a new process would do the same
    assert top[0] not in _items(restarted.get("/v1/users/110/recommendations?k=2"))
    assert top[0] not in _items(restarted.get("/v1/users/555/recommendations?k=30"))


@pytest.mark.parametrize("method,path,body,status,code", [
    ("GET", "/v1/users/abc/recommendations", None, 422, "malformed_id"),
    ("GET", "/v1/users/12.5/recommendations", None, 422, "malformed_id"),
    ("GET", "/v1/users/1%20OR%201/recommendations", None, 422, "malformed_id"),
    ("GET", "/v1/users/101/recommendations?k=0", None, 422, "invalid_request"),
    ("GET", "/v1/users/101/recommendations?k=-3", None, 422, "invalid_request"),
    ("GET", "/v1/users/101/recommendations?k=1000000000", None, 422, "invalid_request"),
    ("GET", "/v1/users/101/recommendations?k=ten", None, 422, "invalid_request"),
    ("GET", "/v1/items/77777/similar", None, 404, "unknown_item"),
    ("GET", "/v1/items/x1/similar", None, 422, "malformed_id"),
    ("GET", "/v1/items/1001/similar?k=0", None, 422, "invalid_request"),
    ("POST", "/v1/users/101/interactions", {"item": 77777}, 404, "unknown_item"),
    ("POST", "/v1/users/101/interactions", {"item": "abc"}, 422, "malformed_id"),
    ("POST", "/v1/users/101/interactions", {"itm": 1001}, 422, "invalid_request"),
    ("POST", "/v1/users/101/interactions", {"item": 1001, "extra": 1}, 422, "invalid_request"),
    ("POST", "/v1/users/101/interactions", {"item": [1001]}, 422, "invalid_request"),
    ("POST", "/v1/users/bad!/interactions", {"item": 1001}, 422, "malformed_id"),
    ("GET", "/v1/nothing", None, 404, "not_found"),
])
def test_bad_input_is_a_json_4xx(client, method, path, body, status, code):
    r = client.request(method, path, json=body)
    assert r.status_code == status
    assert r.json()["error"] == code and r.json()["message"]


def test_bad_json_body(client):
    r = client.post("/v1/users/101/interactions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


@pytest.mark.parametrize("ctype", ["text/plain", None])
def test_a_json_body_not_labelled_json_is_told_so(client, ctype):
    """Not "Input should be a valid dictionary": the body is never parsed when not labelled JSON."""
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/v1/users/101/interactions", content=b'{"item": 1001}', headers=headers)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert "Content-Type: application/json" in r.json()["message"]
    assert (ctype or "no Content-Type") in r.json()["message"]


def test_similar_is_the_recommenders(client, reference):
    r = client.get("/v1/items/1004/similar?k=3")
    assert r.status_code == 200 and r.json()["item"] == 1004
    assert _items(r) == [x["item"] for x in reference.similar(1004, 3)]


def test_string_ids(tmp_path, store):
    run = write_run(tmp_path / "str-run", str_ids=True, factors=4, layers=(8, 4))
    client = TestClient(create_app(run, store))
    r = client.get("/v1/users/user-103/recommendations?k=2")
    assert r.status_code == 200 and r.json()["user"] == "user-103" and r.json()["fallback"] is False
    assert all(x["item"].startswith("m") for x in r.json()["items"])
    assert client.get("/v1/users/stranger.7/recommendations").json()["fallback"] is True
    # one id rule (ncf.data.ids): "user 103" is a valid string id (a stranger here), padding is stripped
    assert client.get("/v1/users/user%20103/recommendations").json()["fallback"] is True
    assert client.get("/v1/users/%20user-103%20/recommendations").json()["user"] == "user-103"
    assert client.get("/v1/users/%20%20/recommendations").status_code == 422
    assert client.post("/v1/users/user-103/interactions", json={"item": 1001}).status_code == 404  # "1001" != "m1001"


def test_two_stage_service(neumf_run, store, reference):
    client = TestClient(create_app(neumf_run, store, candidates=6))
    for user in reference.user_map.raw_ids[:10]:
        body = client.get(f"/v1/users/{user}/recommendations?k=4").json()
        idx = [reference.item_map.index(x["item"]) for x in body["items"]]
        exact = reference.model.score_all(torch.tensor([reference.user_map.index(user)]))[0].numpy()
        np.testing.assert_allclose([x["score"] for x in body["items"]], exact[idx], rtol=1e-5)
        assert not set(idx) & set(reference.seen_items(reference.user_map.index(user)))


def test_rerank_unavailable_says_why(client):
    r = client.get("/v1/users/101/recommendations?rerank=true")
    assert r.status_code == 409 and r.json()["error"] == "rerank_unavailable"
    assert "rerank.json" in r.json()["message"]


def test_negative_candidates_rejected(neumf_run):
    with pytest.raises(ValueError, match="candidates"):
        create_app(neumf_run, candidates=-1)


def test_healthz_and_metrics(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["model"] == "neumf"
    client.get("/v1/users/101/recommendations")
    client.get("/v1/users/101/recommendations")
    client.get("/v1/users/abc/recommendations")
    client.get("/v1/users/424242/recommendations")
    text = client.get("/metrics").text
    assert 'ncf_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="200"} 3.0' in text
    assert 'ncf_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="422"} 1.0' in text
    assert 'ncf_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/users/{user_id}' in text
    assert "ncf_fallback_recommendations_total 1.0" in text


def test_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/v1/users/{user_id}/recommendations", "/v1/items/{item_id}/similar",
            "/v1/users/{user_id}/interactions", "/healthz", "/metrics"} <= set(paths)
    params = {p["name"]: p for p in paths["/v1/users/{user_id}/recommendations"]["get"]["parameters"]}
    assert params["k"]["schema"]["minimum"] == 1 and params["k"]["schema"]["maximum"] == 1000
    assert set(schema["components"]["schemas"]["Recommendations"]["properties"]) >= {"user", "items", "fallback"}
    assert "201" in paths["/v1/users/{user_id}/interactions"]["post"]["responses"]


def _write_rerank(run, n_items: int, boost: int, banned: int) -> None:
    import json

    offset = [0.0] * n_items
    offset[boost] = 5.0  # beats any relevance p in [0, 1]
    (run / "rerank.json").write_text(json.dumps({
        "format": 1, "k": 10, "relevance": "sigmoid", "item_weight": [1.0] * n_items, "item_offset": offset,
        "excluded_items": [banned]}))


def test_rerank_applies_the_offline_multipliers(run_copy, store, reference):
    from ncf.rerank.lagrangian import PerRequestReranker

    user = 112
    plain = reference.recommend(user, 5).items
    banned = reference.item_map.index(plain[0]["item"])
    unseen = np.setdiff1d(np.arange(reference.n_items), reference.seen_items(reference.user_map.index(user)))
    boost = int(unseen[-1]) if int(unseen[-1]) != banned else int(unseen[-2])
    _write_rerank(run_copy, reference.n_items, boost, banned)
    client = TestClient(create_app(run_copy, store))
    body = client.get(f"/v1/users/{user}/recommendations", params={"k": 5, "rerank": "true"}).json()
    assert body["reranked"] is True and body["fallback"] is False
    got = [x["item"] for x in body["items"]]
    assert got[0] == reference.item_map.raw(boost) and plain[0]["item"] not in got
    reference.reranker = PerRequestReranker.from_run(run_copy)
    want = reference.recommend(user, 5, rerank=True).items
    assert got == [x["item"] for x in want]
    np.testing.assert_allclose([x["utility"] for x in body["items"]], [x["utility"] for x in want], rtol=1e-5)
    scores = reference.model.score_all(torch.tensor([reference.user_map.index(user)]))[0].numpy()
    np.testing.assert_allclose([x["score"] for x in body["items"]],
                               scores[[reference.item_map.index(i) for i in got]], rtol=1e-5)
    plain_body = client.get(f"/v1/users/{user}/recommendations?k=5").json()
    assert [x["item"] for x in plain_body["items"]] == [x["item"] for x in plain]
    assert "utility" not in plain_body["items"][0]
    assert client.get("/v1/users/99999/recommendations?rerank=true").json()["fallback"] is True


def test_malformed_rerank_file_disables_rerank_only(run_copy, store):
    (run_copy / "rerank.json").write_text('{"format": 1, "k": 10}')
    client = TestClient(create_app(run_copy, store))
    r = client.get("/v1/users/101/recommendations?rerank=true")
    assert r.status_code == 409 and "rerank.json" in r.json()["message"]
    assert client.get("/v1/users/101/recommendations").status_code == 200
