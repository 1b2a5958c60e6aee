"""The FeatureStore contract, run against both stores, and each store's own failure modes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import scipy.sparse as sp
from serve_helpers import drop_prefix, free_port

from ncf.serve.store import InMemoryStore, RedisStore, RunData, StoreDataError, StoreUnavailable, redact


def _run_data(n_users=5, n_items=7, dim=3, seed=0) -> RunData:
    rng = np.random.default_rng(seed)
    seen = sp.random(n_users, n_items, density=0.4, format="csr", random_state=seed)
    seen.data[:] = 1
    return RunData(
        meta={"model": "neumf", "n_users": n_users, "n_items": n_items},
        items={"gmf": rng.normal(size=(n_items, 2)).astype(np.float32),
               "anchor": rng.normal(size=(1, 4)).astype(np.float32),
               "pop": np.arange(n_items, dtype=np.float64)},
        users=[f"u{i}" for i in range(n_users)],
        vectors=rng.normal(size=(n_users, dim)).astype(np.float32),
        seen=seen,
    )


def test_round_trip(store):
    data = _run_data()
    assert not store.has_run("r1")
    calls = []
    store.load_run("r1", data, progress=lambda done, total: calls.append((done, total)))
    assert store.has_run("r1") and not store.has_run("r2")
    assert calls and calls[-1] == (5, 5)
    meta, items = store.read_items("r1")
    assert meta["n_items"] == 7 and meta["model"] == "neumf"
    for name, arr in data.items.items():
        np.testing.assert_array_equal(items[name], arr)
        assert items[name].dtype == arr.dtype
    states = store.read_users("r1", ["u3", "nobody", "u0"])
    assert [s.index for s in states] == [3, None, 0]
    np.testing.assert_array_equal(states[0].vector, data.vectors[3])
    np.testing.assert_array_equal(states[0].seen, data.seen[3].indices)
    assert states[1].vector is None and len(states[1].seen) == 0


def test_reload_replaces(store):
    store.load_run("r", _run_data(seed=0))
    new = _run_data(seed=1)
    store.load_run("r", new)
    np.testing.assert_array_equal(store.read_users("r", ["u2"])[0].vector, new.vectors[2])
    np.testing.assert_array_equal(store.read_items("r")[1]["gmf"], new.items["gmf"])


def test_interactions_by_user_across_runs(store):
    store.load_run("r", _run_data())
    store.add_interaction("u1", "i9")
    store.add_interaction("u1", "i2")
    store.add_interaction("u1", "i9")  # idempotent
    store.add_interaction("stranger", "i4")
    a, b, c = store.read_users("r", ["u1", "stranger", "u2"])
    assert sorted(a.events) == ["i2", "i9"] and a.index == 1
    assert b.events == ["i4"] and b.index is None
    assert c.events == []


def test_interactions_survive_reopen(store_factory):
    first = store_factory()
    first.add_interaction("u1", "i3")
    first.close()
    second = store_factory()
    second.load_run("r", _run_data())
    assert second.read_users("r", ["u1"])[0].events == ["i3"]
    second.close()


def test_mismatched_run_data_rejected(store):
    data = _run_data()
    data.users = data.users[:-1]
    with pytest.raises(ValueError, match="users"):
        store.load_run("r", data)


def test_memory_unknown_run():
    with pytest.raises(StoreDataError, match="not loaded"):
        InMemoryStore().read_items("nope")


def test_journal_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"user": "1", "item": "5"}) + "\n" + '{"user": "1", "it')
    with pytest.warns(UserWarning, match="torn last line"):
        s = InMemoryStore(path)
    s.load_run("r", _run_data())
    assert s.read_users("r", ["1"])[0].events == ["5"]


def test_journal_corrupt_line_named(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"user": "1", "item": "5"}\nnot json\n{"user": "2", "item": "6"}\n')
    with pytest.raises(StoreDataError, match=r"j\.jsonl:2"):
        InMemoryStore(path)


def test_journal_not_writable(tmp_path):
    with pytest.raises(ValueError, match="cannot write the interaction journal"):
        InMemoryStore(tmp_path / "no-such-dir" / "j.jsonl")


def test_redis_url_checked_and_redacted():
    with pytest.raises(ValueError, match="redis://"):
        RedisStore("http://127.0.0.1:6379")
    assert redact("redis://:s3cret@127.0.0.1:6379/2") == "redis://127.0.0.1:6379/2"


def test_redis_down_fails_fast_and_names_url():
    store = RedisStore(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.2, cooldown=5.0)
    t = time.perf_counter()
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
        store.ping()
    first = time.perf_counter() - t
    t = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="retrying in"):  # circuit open: no network at all
        store.read_users("r", ["1"])
    assert first < 1.0 and time.perf_counter() - t < 0.01


def test_redis_corrupt_records(redis_url):
    import redis

    store = RedisStore(redis_url, prefix="ncftest:corrupt")
    try:
        store.load_run("r", _run_data())
        client = redis.Redis.from_url(redis_url)
        client.hset("ncftest:corrupt:run:r:u:u1", "vec", b"\x00\x01\x02")  # not a float32 array
        with pytest.raises(StoreDataError, match="ncftest:corrupt:run:r:u:u1"):
            store.read_users("r", ["u1"])
        client.hset("ncftest:corrupt:run:r:items", "gmf", b"\x00" * 5)
        with pytest.raises(StoreDataError, match="gmf"):
            store.read_items("r")
        client.hset("ncftest:corrupt:run:r:meta", "complete", "0")  # an interrupted load
        assert not store.has_run("r")
        with pytest.raises(StoreDataError, match="not loaded"):
            store.read_items("r")
        client.close()
    finally:
        drop_prefix(redis_url, "ncftest:corrupt")
        store.close()


def _closed_port() -> int:
    return free_port()  # bound then released: nothing listens there
