"""Adversarial cases against the service and its stores (issue 20), kept as a module that grows.

Each test reproduces a defect found by an adversarial run (the issue's case number in its
docstring) and failed before its fix. Sections: HTTP inputs, access control and limits,
store faults, kill/restart. Redis cases skip without a redis-server binary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from serve_helpers import RedisProcess, free_port, spread, write_run
from typer.testing import CliRunner

from ncf.checkpoint import save_model, save_run_data
from ncf.cli import app as cli_app
from ncf.cli import main as cli_main
from ncf.data.ids import canonical_id
from ncf.data.interactions import Interactions
from ncf.data.readers import read_table
from ncf.models import GMF
from ncf.serve.app import create_app
from ncf.serve.store import InMemoryStore, RedisStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def _run_from_raw(directory: Path, users: list, items: list, model_cls=GMF, **params) -> Path:
    """A run over the given raw (user, item) pairs, ids as the reader would keep them."""
    directory.mkdir(parents=True, exist_ok=True)
    inter = Interactions.from_raw(np.array(users, dtype=object), np.array(items, dtype=object))
    model = spread(model_cls.from_params(inter.n_users, inter.n_items, **params))
    save_run_data(directory, inter.user_map, inter.item_map, inter.matrix, {})
    save_model(directory, model, {"data": {"source": "synthetic"}})
    return directory


def _items(resp) -> list:
    return [x["item"] for x in resp.json()["items"]]


# === HTTP inputs ===========================================================================

ODD_USERS = ["1 x", "ü196é", "a/b", "it'1", "<script>", "a?b#c", "50%"]
ODD_ITEMS = ["it'1", "ü196é", "x y", "p/q", "m-1", "m-2", "m-3", "m-4"]


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory) -> tuple[Path, list, list]:
    """A run read from a CSV file whose ids the reader accepts but the old HTTP rule refused."""
    root = tmp_path_factory.mktemp("odd-ids")
    rows = [(u, ODD_ITEMS[(n + j) % len(ODD_ITEMS)]) for n, u in enumerate(ODD_USERS) for j in range(4)]
    csv = root / "ratings.csv"
    csv.write_text("".join(f"  {u} ,{i}\t\n" for u, i in rows))  # padded, as people write them
    ratings = read_table(csv, sep=",", header=False)
    assert sorted(set(ratings.users.tolist())) == sorted(ODD_USERS)  # stripped, kept exactly
    assert sorted(set(ratings.items.tolist())) == sorted(ODD_ITEMS)
    return _run_from_raw(root / "run", ratings.users.tolist(), ratings.items.tolist(), factors=3), rows, ratings


def test_ids_the_reader_accepts_are_served_over_http(odd_run, store):
    """Case 7: ``1 x``, ``it'1``, ``ü196é`` (and ``a/b``, ``50%``) round-trip URL-encoded."""
    run, _, _ = odd_run
    client = TestClient(create_app(run, store))
    for user in ODD_USERS:
        r = client.get(f"/v1/users/{quote(user, safe='')}/recommendations", params={"k": 2})
        assert r.status_code == 200, (user, r.text)
        assert r.json()["user"] == user and r.json()["fallback"] is False
    for item in ODD_ITEMS:
        r = client.get(f"/v1/items/{quote(item, safe='')}/similar", params={"k": 2})
        assert r.status_code == 200, (item, r.text)
        assert r.json()["item"] == item
    user = ODD_USERS[0]
    top = _items(client.get(f"/v1/users/{quote(user, safe='')}/recommendations", params={"k": 1}))[0]
    r = client.post(f"/v1/users/{quote(user, safe='')}/interactions", json={"item": top})
    assert r.status_code == 201 and r.json() == {"user": user, "item": top, "stored": True}
    assert top not in _items(client.get(f"/v1/users/{quote(user, safe='')}/recommendations", params={"k": 3}))
    # padded ids are the same ids (the reader strips them)
    r = client.get(f"/v1/users/{quote('  ' + user + ' ', safe='')}/recommendations", params={"k": 2})
    assert r.status_code == 200 and r.json()["user"] == user and not r.json()["fallback"]


def test_int64_ids_above_18_digits_are_served(tmp_path):
    """Case 7: integer ids up to 2^63-1 (19 digits) are servable; beyond int64 they are malformed."""
    big = [2**63 - 1, 1234567890123456789, 7]
    run = _run_from_raw(tmp_path / "run", [big[n % 3] for n in range(12)], [10**18 + n % 5 for n in range(12)],
                        factors=3)
    client = TestClient(create_app(run, InMemoryStore()))
    for user in big:
        r = client.get(f"/v1/users/{user}/recommendations", params={"k": 2})
        assert r.status_code == 200 and r.json()["user"] == user and not r.json()["fallback"], r.text
    assert client.get(f"/v1/users/%20{big[0]}%20/recommendations").json()["user"] == big[0]
    r = client.post(f"/v1/users/{big[0]}/interactions", json={"item": str(10**18 + 1)})
    assert r.status_code == 201 and r.json()["item"] == 10**18 + 1
    r = client.get(f"/v1/users/{2**63}/recommendations")
    assert r.status_code == 422 and "int64" in r.json()["message"]
    assert client.get("/v1/users/1e3/recommendations").status_code == 422


def test_one_id_rule_for_reader_cli_and_http(neumf_run, odd_run):
    """Case 7: the CLI strips what the reader strips (``--user " 101 "`` is user 101, not a
    fallback), and ``canonical_id`` gives every id the reader produced back unchanged."""
    runner = CliRunner()
    res = runner.invoke(cli_app, ["recommend", str(neumf_run), "--user", " 101 ", "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fallback"] is False and json.loads(res.output)["user"] == 101
    res = runner.invoke(cli_app, ["recommend", str(neumf_run), "--user", " 9999 ", "-k", "2", "--json"])
    assert json.loads(res.output)["fallback"] is True and json.loads(res.output)["user"] == 9999
    run, _, ratings = odd_run
    res = runner.invoke(cli_app, ["recommend", str(run), "--user", " 1 x ", "-k", "2", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["user"] == "1 x" and not json.loads(res.output)["fallback"]
    for raw in set(ratings.users.tolist()) | set(ratings.items.tolist()):
        assert canonical_id(f" {raw}\t", integer=False) == raw
    assert canonical_id(" 007 ", integer=True) == 7 and canonical_id("+7", integer=True) == 7
    for bad in ("", "  ", "1_000", "٣", "７", "1e3", str(2**63)):
        with pytest.raises(ValueError):
            canonical_id(bad, integer=True)


# === access control and limits (case 13, issue 18 item 5) ==================================

def test_api_key_guards_writes(neumf_run, store):
    client = TestClient(create_app(neumf_run, store, api_key="s3cret"))
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = client.post("/v1/users/101/interactions", json={"item": 1001}, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    r = client.post("/v1/users/101/interactions", json={"item": 1001}, headers={"X-API-Key": "s3cret"})
    assert r.status_code == 201
    assert client.get("/v1/users/101/recommendations").status_code == 200  # reads stay open
    assert client.get("/healthz").status_code == 200
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert any((s["type"], s["in"], s["name"]) == ("apiKey", "header", "X-API-Key") for s in schemes.values())
    assert schema["paths"]["/v1/users/{user_id}/interactions"]["post"]["security"]
    assert "security" not in schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    assert "401" in schema["paths"]["/v1/users/{user_id}/interactions"]["post"]["responses"]


def test_api_key_on_reads_when_asked(neumf_run):
    client = TestClient(create_app(neumf_run, InMemoryStore(), api_key="s3cret", api_key_reads=True))
    assert client.get("/v1/users/101/recommendations").status_code == 401
    assert client.get("/v1/items/1001/similar").status_code == 401
    assert client.get("/v1/users/101/recommendations", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes and scrapes stay open
    assert client.get("/metrics").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]["security"]


def test_api_key_reads_cover_info_and_history(neumf_run):
    """With ``--api-key-reads`` the page's helpers are reads like any other: ``/v1/info`` (which
    lists user ids) and a user's history need the key too."""
    client = TestClient(create_app(neumf_run, InMemoryStore(), api_key="s3cret", api_key_reads=True))
    for path in ("/v1/info", "/v1/users/101/history"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", (path, r.text)
        assert client.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200, path
    assert "sample_users" in client.get("/v1/info", headers={"X-API-Key": "s3cret"}).json()
    open_client = TestClient(create_app(neumf_run, InMemoryStore(), api_key="s3cret"))  # writes only: reads open
    assert open_client.get("/v1/info").status_code == 200


def test_invalid_utf8_in_a_url_id_is_a_400(odd_run, store):
    """``/v1/users/%FF/...`` is not an id: refused with 400 naming the byte, never stored under
    U+FFFD (where every such id would share one user); valid UTF-8 (``%C3%BC``) still works."""
    run, _, _ = odd_run
    client = TestClient(create_app(run, store))
    for method, path in (("GET", "/v1/users/%FF/recommendations"), ("POST", "/v1/users/a%FEb/interactions"),
                         ("GET", "/v1/items/%C3%28/similar"), ("GET", "/v1/users/%FF/history")):
        r = client.request(method, path, json={"item": ODD_ITEMS[0]} if method == "POST" else None)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"] == "malformed_url" and "UTF-8" in r.json()["message"], r.text
    service = client.app.state.service
    assert service.read_user("\ufffd").events == [] and service.read_user("a\ufffdb").events == []
    r = client.get(f"/v1/users/{quote('ü196é', safe='')}/recommendations", params={"k": 2})
    assert r.status_code == 200 and r.json()["user"] == "ü196é"


def test_request_body_size_limit(neumf_run, tmp_path):
    journal = tmp_path / "interactions.jsonl"
    client = TestClient(create_app(neumf_run, InMemoryStore(journal), max_body_bytes=1024))
    big = json.dumps({"item": "x" * 50_000})
    r = client.post("/v1/users/101/interactions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large" and "1024" in r.json()["message"]

    def chunks():  # no Content-Length: the limit holds on the bytes actually received
        for _ in range(50):
            yield b" " * 1000

    r = client.post("/v1/users/101/interactions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert client.post("/v1/users/101/interactions", json={"item": 1001}).status_code == 201
    assert len(journal.read_text().splitlines()) == 1
    assert 'status="413"' in client.get("/metrics").text


def test_interactions_per_user_are_bounded(neumf_run, store):
    client = TestClient(create_app(neumf_run, store, max_events_per_user=3))
    for item in (1001, 1002, 1003):
        assert client.post("/v1/users/555/interactions", json={"item": item}).status_code == 201
    r = client.post("/v1/users/555/interactions", json={"item": 1004})
    assert r.status_code == 409 and r.json()["error"] == "user_event_limit" and "3" in r.json()["message"], r.text
    # the same item again records nothing new and is fine
    assert client.post("/v1/users/555/interactions", json={"item": 1002}).status_code == 201
    assert client.post("/v1/users/556/interactions", json={"item": 1004}).status_code == 201  # per user
    left = _items(client.get("/v1/users/555/recommendations", params={"k": 30}))  # a fallback: popular items
    assert 1004 in left and not {1001, 1002, 1003} & set(left)  # the refused one was not recorded


def test_interactions_per_request_are_bounded(neumf_run, store):
    """Case 13: several interactions in one POST (``items``), at most --max-items-per-request;
    every id is checked before anything is recorded."""
    client = TestClient(create_app(neumf_run, store, max_items_per_request=3))
    r = client.post("/v1/users/555/interactions", json={"items": [1001, "1002", 1003, 1004]})
    assert r.status_code == 422 and r.json()["error"] == "too_many_items" and "at most 3" in r.json()["message"]
    r = client.post("/v1/users/555/interactions", json={"items": [1001, 99999]})
    assert r.status_code == 404 and r.json()["error"] == "unknown_item"
    assert 1001 in _items(client.get("/v1/users/555/recommendations", params={"k": 30}))  # nothing recorded
    r = client.post("/v1/users/555/interactions", json={"items": [1001, " 1002 ", 1003]})
    assert r.status_code == 201 and r.json() == {"user": 555, "items": [1001, 1002, 1003], "stored": True}
    assert not {1001, 1002, 1003} & set(_items(client.get("/v1/users/555/recommendations", params={"k": 30})))
    r = client.post("/v1/users/555/interactions", json={"item": 1004, "items": [1005]})
    assert r.status_code == 422 and "exactly one" in r.json()["message"]
    assert client.post("/v1/users/555/interactions", json={}).status_code == 422


# === store faults ==========================================================================

def _journal(path: Path) -> dict[str, list[str]]:
    """Recorded items per user, as the journal file holds them."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["user"], []).append(rec["item"])
    return out


def test_journal_torn_tail_is_repaired_on_start(run_copy):
    """Case 1: a crash mid-write leaves a torn last line; the next start truncates it (keeping
    the bytes in a side file) so that the next acknowledged write is a whole line."""
    journal = run_copy / "interactions.jsonl"
    client = TestClient(create_app(run_copy, InMemoryStore(journal)))
    assert client.post("/v1/users/101/interactions", json={"item": 1001}).status_code == 201
    torn = b'{"user": "102", "item": "10'
    with open(journal, "ab") as f:
        f.write(torn)
    with pytest.warns(UserWarning, match="torn"):
        store = InMemoryStore(journal)
    side = journal.with_name(journal.name + ".torn")
    assert side.read_bytes().startswith(torn)
    assert journal.read_bytes().endswith(b"\n") and torn not in journal.read_bytes()
    client = TestClient(create_app(run_copy, store))
    assert client.post("/v1/users/103/interactions", json={"item": 1003}).status_code == 201
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file now: no warning, no error
        again = InMemoryStore(journal)
    client = TestClient(create_app(run_copy, again))
    assert _journal(journal) == {"101": ["1001"], "103": ["1003"]}
    assert 1003 not in _items(client.get("/v1/users/103/recommendations", params={"k": 30}))


def test_journal_last_record_without_newline_is_completed(run_copy):
    """Case 1: a whole last record whose newline was not written is kept and closed."""
    journal = run_copy / "interactions.jsonl"
    journal.write_text(json.dumps({"user": "101", "item": "1001", "ts": 1.0}))
    store = InMemoryStore(journal)
    client = TestClient(create_app(run_copy, store))
    assert client.post("/v1/users/101/interactions", json={"item": 1002}).status_code == 201
    assert _journal(journal) == {"101": ["1001", "1002"]}
    client = TestClient(create_app(run_copy, InMemoryStore(journal)))
    assert not {1001, 1002} & set(_items(client.get("/v1/users/101/recommendations", params={"k": 30})))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_journal_write_failure_is_a_json_503_counted_and_not_acknowledged(run_copy):
    """Case 9: a full disk under the journal: 503 with the JSON error body, counted in /metrics,
    the interaction neither acknowledged nor applied; writes succeed again once there is room."""
    journal = run_copy / "interactions.jsonl"
    client = TestClient(create_app(run_copy, InMemoryStore(journal)), raise_server_exceptions=False)
    top = _items(client.get("/v1/users/101/recommendations", params={"k": 1}))[0]
    journal.unlink()
    journal.symlink_to("/dev/full")  # every write now fails with ENOSPC
    r = client.post("/v1/users/101/interactions", json={"item": top})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "store_unavailable" and "interactions.jsonl" in r.json()["message"]
    assert top in _items(client.get("/v1/users/101/recommendations", params={"k": 1}))  # not applied
    metrics = client.get("/metrics").text
    assert "ncf_store_write_errors_total 1.0" in metrics
    journal.unlink()  # room again
    assert client.post("/v1/users/101/interactions", json={"item": top}).status_code == 201
    assert top not in _items(client.get("/v1/users/101/recommendations", params={"k": 1}))


def test_shortened_idmap_is_a_clear_startup_error(run_copy, monkeypatch, capsys):
    """Case 8 over HTTP: an id map that does not belong to the weights stops the service at
    start with a message naming idmap.json, instead of plain-text 500s on every request."""
    path = run_copy / "idmap.json"
    maps = json.loads(path.read_text())
    maps["items"] = maps["items"][:-3]
    path.write_text(json.dumps(maps))
    with pytest.raises(ValueError, match="idmap.json"):
        create_app(run_copy, InMemoryStore())
    served = []
    monkeypatch.setattr("uvicorn.run", lambda application, **kw: served.append(application))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", str(run_copy)])
    assert exit_.value.code == 2 and not served
    assert "idmap.json" in capsys.readouterr().err


def test_volatile_redis_is_refused_or_flagged(neumf_run, tmp_path, monkeypatch, capsys):
    """Case 4: Redis with neither an append-only file nor snapshots loses every acknowledged
    interaction on a restart: ``ncf serve`` refuses it unless --allow-volatile-store, and the
    service says so in /healthz."""
    server = RedisProcess(tmp_path / "volatile", appendonly=False).start()
    try:
        store = RedisStore(server.url, timeout=2.0)
        assert store.describe()["durability"] == "volatile"
        client = TestClient(create_app(neumf_run, store))
        health = client.get("/healthz").json()
        assert health["durability"] == "volatile" and "appendonly" in health["warning"]
        served = []
        monkeypatch.setattr("uvicorn.run", lambda application, **kw: served.append(application))
        with pytest.raises(SystemExit) as exit_:
            cli_main(["serve", str(neumf_run), "--redis", server.url])
        assert exit_.value.code == 2 and not served and "--allow-volatile-store" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exit_:
            cli_main(["serve", str(neumf_run), "--redis", server.url, "--allow-volatile-store"])
        assert exit_.value.code == 0 and "warning: Redis runs without persistence" in capsys.readouterr().err
        assert len(served) == 1
        assert TestClient(served[0]).get("/healthz").json()["durability"] == "volatile"
    finally:
        server.stop()


def test_durable_redis_says_so(neumf_run, redis_proc):
    store = RedisStore(redis_proc.url, timeout=2.0)
    info = store.describe()
    assert info["durability"] == "aof" and info["appendfsync"] == "always"
    health = TestClient(create_app(neumf_run, store)).get("/healthz").json()
    assert health["durability"] == "aof" and health.get("warning") is None


def test_in_process_store_durability(neumf_run, tmp_path):
    assert InMemoryStore(tmp_path / "j.jsonl").describe()["durability"] == "fsync"
    health = TestClient(create_app(neumf_run, InMemoryStore())).get("/healthz").json()
    assert health["durability"] == "volatile" and health["warning"]


# === events shared per catalogue (case 14) =================================================

def _other_catalogue_run(directory: Path) -> Path:
    """Same raw user and item ids as ``neumf_run`` (users 101.., items 1001..) plus more items:
    another catalogue."""
    users = [101 + n % 40 for n in range(400)]
    items = [1001 + (n * 7) % 36 for n in range(400)]
    return _run_from_raw(directory, users, items, factors=4)


def test_events_do_not_leak_across_catalogues(neumf_run, tmp_path, store):
    """Case 14: two services of different catalogues on one store (one Redis database): a POST
    to one leaves the other's slates alone; a retrained model of the same catalogue shares it."""
    other = _other_catalogue_run(tmp_path / "other")
    a = TestClient(create_app(neumf_run, store))
    b = TestClient(create_app(other, store))
    b_top = _items(b.get("/v1/users/101/recommendations", params={"k": 10}))
    shared = next(i for i in b_top if i <= 1030)  # an item both catalogues hold
    assert a.post("/v1/users/101/interactions", json={"item": shared}).status_code == 201
    assert _items(b.get("/v1/users/101/recommendations", params={"k": 10})) == b_top  # untouched
    assert b.get("/healthz").json()["events_namespace"] != a.get("/healthz").json()["events_namespace"]
    # a retrained model of the same catalogue shares the events
    same = write_run(tmp_path / "gmf-same", GMF, seed=3, factors=5)
    c = TestClient(create_app(same, store))
    assert c.get("/healthz").json()["events_namespace"] == a.get("/healthz").json()["events_namespace"]
    c_top = _items(c.get("/v1/users/101/recommendations", params={"k": 3}))
    assert a.post("/v1/users/101/interactions", json={"item": c_top[0]}).status_code == 201
    assert c_top[0] not in _items(c.get("/v1/users/101/recommendations", params={"k": 3}))


def test_events_namespace_can_be_named(neumf_run, tmp_path):
    """A catalogue that grows between retrainings keeps its events under a name of its own."""
    other = _other_catalogue_run(tmp_path / "other")
    store = InMemoryStore()
    a = TestClient(create_app(neumf_run, store, events_namespace="shop"))
    b = TestClient(create_app(other, store, events_namespace="shop"))
    top = _items(b.get("/v1/users/101/recommendations", params={"k": 1}))[0]
    assert a.post("/v1/users/101/interactions", json={"item": top}).status_code == 201
    assert top not in _items(b.get("/v1/users/101/recommendations", params={"k": 3}))


def test_events_recorded_before_namespaces_stay_visible(neumf_run, tmp_path, store):
    """Upgrading loses nothing: interactions recorded without a namespace (Redis PREFIX:events:USER,
    journal lines without "ns") still leave the user's slates; new ones go to the namespace.
    (Fold-in off: it would reorder the slate, which is not what this test is about.)"""
    client = TestClient(create_app(neumf_run, store, foldin=False))
    top = _items(client.get("/v1/users/101/recommendations", params={"k": 2}))
    store.add_interaction("101", str(top[0]))  # as the previous version recorded it (ns "")
    assert _items(client.get("/v1/users/101/recommendations", params={"k": 1})) == [top[1]]
    if isinstance(store, InMemoryStore):
        journal = tmp_path / "old.jsonl"
        journal.write_text(json.dumps({"user": "101", "item": str(top[0]), "ts": 1.0}) + "\n")
        old = TestClient(create_app(neumf_run, InMemoryStore(journal), foldin=False))
        assert _items(old.get("/v1/users/101/recommendations", params={"k": 1})) == [top[1]]


# === kill / restart ========================================================================

def _serve(run: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ncf", "serve", str(run), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode())
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("ncf serve did not come up in 60 s")
        time.sleep(0.2)


def test_serve_cli_options(neumf_run, monkeypatch):
    """Case 13 flags reach the app: NCF_API_KEY, --api-key-reads, --max-body-bytes,
    --max-events-per-user, --max-items-per-request, --events-namespace."""
    served = []
    monkeypatch.setattr("uvicorn.run", lambda application, **kw: served.append(application))
    monkeypatch.setenv("NCF_API_KEY", "k1")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", str(neumf_run), "--no-journal", "--api-key-reads", "--max-body-bytes", "100",
                  "--max-events-per-user", "1", "--max-items-per-request", "2", "--events-namespace", "shop"])
    assert exit_.value.code == 0
    client = TestClient(served[0])
    key = {"X-API-Key": "k1"}
    assert client.get("/v1/users/101/recommendations").status_code == 401
    assert client.get("/v1/users/101/recommendations", headers=key).status_code == 200
    assert client.post("/v1/users/101/interactions", json={"item": 1001}).status_code == 401
    assert client.post("/v1/users/101/interactions", json={"item": "x" * 200}, headers=key).status_code == 413
    assert client.post("/v1/users/101/interactions", json={"item": 1001}, headers=key).status_code == 201
    assert client.post("/v1/users/101/interactions", json={"item": 1002}, headers=key).status_code == 409
    r = client.post("/v1/users/102/interactions", json={"items": [1001, 1002, 1003]}, headers=key)
    assert r.status_code == 422 and r.json()["error"] == "too_many_items"
    assert client.get("/healthz").json()["events_namespace"] == "shop"


@pytest.mark.parametrize("args, says", [
    (["--api-key-reads"], "--api-key-reads needs an API key"),
    (["--events-namespace", "a:b"], "events namespace"),
    (["--max-items-per-request", "0"], "max_items_per_request"),
    (["--api-key", " padded "], "API key"),
])
def test_serve_cli_refusals_are_one_line(neumf_run, monkeypatch, capsys, args, says):
    monkeypatch.delenv("NCF_API_KEY", raising=False)
    monkeypatch.setattr("uvicorn.run", lambda application, **kw: pytest.fail("served"))
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", str(neumf_run), "--no-journal", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err and "Traceback" not in err


def test_serve_process_kill9_keeps_acknowledged_and_repairs_torn_tail(run_copy):
    """Case 1 end to end: acknowledged interactions of a real ``ncf serve`` process survive
    kill -9; a torn tail left behind is cut at the next start and the next write is whole."""
    proc, url = _serve(run_copy, env={"NCF_API_KEY": "k1"})
    acked = []
    try:
        for item in range(1001, 1011):
            if httpx.post(url + "/v1/users/120/interactions", json={"item": item},  # generous: a loaded machine
                          headers={"X-API-Key": "k1"}, timeout=60).status_code == 201:
                acked.append(str(item))
    finally:
        proc.kill()  # SIGKILL: no clean shutdown
        proc.wait(timeout=20)
    journal = run_copy / "interactions.jsonl"
    assert len(acked) == 10 and set(_journal(journal)["120"]) == set(acked)
    with open(journal, "ab") as f:  # as if killed in the middle of a write
        f.write(b'{"user": "120", "item": "10')
    with pytest.warns(UserWarning, match="torn"):
        client = TestClient(create_app(run_copy, InMemoryStore(journal)))  # what `ncf serve` builds
    assert client.post("/v1/users/121/interactions", json={"item": 1001}).status_code == 201
    events = _journal(journal)
    assert set(events["120"]) == set(acked) and events["121"] == ["1001"]
    assert journal.with_name("interactions.jsonl.torn").read_bytes().startswith(b'{"user": "120"')


def test_redis_kill9_keeps_acknowledged_interactions(neumf_run, redis_proc):
    """The promise for ``appendonly yes`` + ``appendfsync always``: every acknowledged POST is in
    the append-only file, so a SIGKILL of redis-server (no clean shutdown) loses none."""
    client = TestClient(create_app(neumf_run, RedisStore(redis_proc.url, timeout=2.0)))
    acked = [item for item in range(1001, 1031)
             if client.post("/v1/users/777/interactions", json={"item": item}).status_code == 201]
    redis_proc.proc.kill()
    redis_proc.proc.wait(timeout=10)
    redis_proc.proc = None
    redis_proc.start()
    client = TestClient(create_app(neumf_run, RedisStore(redis_proc.url, timeout=2.0)))
    assert len(acked) == 30
    assert _items(client.get("/v1/users/777/recommendations", params={"k": 30})) == []  # all 30 recorded


def test_write_answered_503_while_redis_paused_is_not_known_recorded(neumf_run, redis_proc):
    """Redis paused (SIGSTOP) past the socket timeout: the POST is answered 503, yet Redis applies
    the queued command once it resumes. So a 503 on a write means "not known to be recorded",
    and says so; retrying the same request records the item once (a user's items are a set)."""
    import signal

    client = TestClient(create_app(neumf_run, RedisStore(redis_proc.url, timeout=0.25, cooldown=0.0)),
                        raise_server_exceptions=False)
    top = _items(client.get("/v1/users/101/recommendations", params={"k": 1}))[0]
    os.kill(redis_proc.proc.pid, signal.SIGSTOP)
    try:
        r = client.post("/v1/users/101/interactions", json={"item": top})
    finally:
        os.kill(redis_proc.proc.pid, signal.SIGCONT)
    assert r.status_code == 503, r.text
    assert "not known to be recorded" in r.json()["message"] and "retry" in r.json()["message"], r.text
    time.sleep(0.5)
    history = client.get("/v1/users/101/history").json()
    assert [x["item"] for x in history["recorded"]] == [top]  # applied after all: hence "not known"
    assert client.post("/v1/users/101/interactions", json={"item": top}).status_code == 201  # the retry
    assert [x["item"] for x in client.get("/v1/users/101/history").json()["recorded"]] == [top]  # once
