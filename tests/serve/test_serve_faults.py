"""Redis failures: stopped mid-run (fail fast with 503, recover alone), restarted (recorded
interactions persist), flushed (the service reloads the run). Each test runs its own
redis-server (``redis_proc``: append-only file on, fsync always)."""

from __future__ import annotations

import time
import warnings

import redis

from ncf.serve.app import create_app
from ncf.serve.store import RedisStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def _client(run, url: str) -> TestClient:
    return TestClient(create_app(run, RedisStore(url, timeout=0.25, cooldown=0.2)))


def _wait_for(client: TestClient, path: str, status: int, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if client.get(path).status_code == status:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{path} did not answer {status} within {within} s")


def test_redis_stopped_mid_run_fails_fast_then_recovers(neumf_run, redis_proc):
    client = _client(neumf_run, redis_proc.url)
    path = "/v1/users/101/recommendations?k=3"
    ok = client.get(path)
    assert ok.status_code == 200
    redis_proc.stop()
    for _ in range(5):
        t = time.perf_counter()
        r = client.get(path)
        assert r.status_code == 503 and time.perf_counter() - t < 1.0
        assert r.json()["error"] == "store_unavailable" and str(redis_proc.port) in r.json()["message"]
        assert r.headers["retry-after"] == "1"
    assert client.post("/v1/users/101/interactions", json={"item": 1001}).status_code == 503
    assert client.get("/healthz").status_code == 503
    assert client.get("/v1/items/1001/similar").status_code == 200  # needs no store
    assert "ncf_store_unavailable_total" in client.get("/metrics").text
    redis_proc.start()  # same port, same data directory
    assert _wait_for(client, path, 200, within=5.0) < 5.0
    assert client.get(path).json() == ok.json()
    assert client.get("/healthz").status_code == 200


def test_interactions_survive_redis_and_service_restart(neumf_run, redis_proc):
    client = _client(neumf_run, redis_proc.url)
    top = [x["item"] for x in client.get("/v1/users/120/recommendations?k=2").json()["items"]]
    assert client.post("/v1/users/120/interactions", json={"item": top[0]}).status_code == 201
    redis_proc.stop()
    redis_proc.start()
    restarted = _client(neumf_run, redis_proc.url)
    after = [x["item"] for x in restarted.get("/v1/users/120/recommendations?k=2").json()["items"]]
    assert top[0] not in after  # the recorded item survived both restarts (fold-in may reorder the rest)
    service = restarted.app.state.service
    assert service.store.read_users(service.run_id, ["120"], ns=service.events_ns)[0].events == [str(top[0])]


def test_service_started_while_redis_down(neumf_run, redis_proc):
    redis_proc.stop()
    client = _client(neumf_run, redis_proc.url)  # starts anyway, answers 503 until Redis is up
    assert client.get("/v1/users/101/recommendations").status_code == 503
    redis_proc.start()
    _wait_for(client, "/v1/users/101/recommendations", 200, within=5.0)


def test_flushed_store_is_reloaded(neumf_run, redis_proc):
    client = _client(neumf_run, redis_proc.url)
    before = client.get("/v1/users/130/recommendations?k=3").json()
    redis.Redis.from_url(redis_proc.url).flushall()
    assert client.get("/v1/users/130/recommendations?k=3").json() == before
