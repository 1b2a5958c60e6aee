"""FeatureStore: where the online service looks up user and item features.

Two implementations behind one interface (and one test suite):

- ``RedisStore``: a redis-server. Bulk loads go through chunked pipelines; a request
  reads everything about its user (embedding, training seen-set, online interactions)
  in one pipelined round trip. Short socket timeouts, one quick retry and a circuit
  breaker make requests fail fast (``StoreUnavailable`` -> HTTP 503) while Redis is down;
  the connection pool reconnects by itself once it is back.
- ``InMemoryStore``: dicts in the process, the embedded default. Interactions recorded
  online are appended to an optional journal file (JSON lines), replayed on start, so
  they survive a restart of the service.

Redis layout (``prefix`` defaults to ``ncf``; ``rid`` is the run's fingerprint)::

    {prefix}:run:{rid}:meta      hash  model, n_users, n_items, user_dim, complete
    {prefix}:run:{rid}:items     hash  one field per item array (raw bytes) + "spec" (JSON dtypes/shapes)
    {prefix}:run:{rid}:u:{user}  hash  idx, vec (float32 bytes), seen (int32 item indexes)
    {prefix}:events:{user}       set   raw item ids recorded through the API (model-independent)
    {prefix}:run:{rid}:f:{user}  hash  vec (float32 bytes), n: the user's fold-in vector and the
                                       number of recorded items it covers (ncf.serve.foldin)

Raw ids are keyed by their string form.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import scipy.sparse as sp


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now (the service answers 503 and retries later)."""


class StoreDataError(ValueError):
    """The store holds something that cannot be decoded; the message names the key."""


@dataclass
class UserState:
    """What the store knows about one user. ``index`` is None for a user the run lacks."""

    index: int | None = None
    vector: np.ndarray | None = None  # [user_dim] float32
    seen: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # training item indexes
    events: list[str] = field(default_factory=list)  # raw item ids recorded online


@dataclass
class RunData:
    """Everything ``load_run`` writes for one run: per-item arrays and per-user rows."""

    meta: dict
    items: dict[str, np.ndarray]  # name -> [n_items, ...]
    users: list[str]  # raw user ids (str), by index
    vectors: np.ndarray  # [n_users, user_dim] float32
    seen: sp.csr_matrix  # users x items


ProgressFn = Callable[[int, int], None]


class FeatureStore(ABC):
    """Interface of a feature store. Every method may raise ``StoreUnavailable``."""

    @abstractmethod
    def ping(self) -> None: ...

    @abstractmethod
    def has_run(self, run_id: str) -> bool:
        """True when ``run_id`` was loaded completely."""

    @abstractmethod
    def load_run(self, run_id: str, data: RunData, progress: ProgressFn | None = None) -> None:
        """Write a run's features (replacing a previous load of the same run)."""

    @abstractmethod
    def read_items(self, run_id: str) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, item arrays) of a loaded run."""

    @abstractmethod
    def read_users(self, run_id: str, users: list[str]) -> list[UserState]:
        """One ``UserState`` per raw user id, in one batched read."""

    @abstractmethod
    def add_interaction(self, user: str, item: str) -> None:
        """Record that ``user`` interacted with ``item`` (raw ids), durably, before returning."""

    def write_foldin(self, run_id: str, user: str, vector: np.ndarray, n_events: int) -> None:
        """Store the user's fold-in vector for ``run_id``, covering ``n_events`` recorded items."""
        raise NotImplementedError(f"{type(self).__name__} cannot store fold-in vectors")

    def read_foldin(self, run_id: str, user: str) -> tuple[np.ndarray, int] | None:
        """(vector, n_events) written by ``write_foldin``, or None."""
        raise NotImplementedError(f"{type(self).__name__} cannot store fold-in vectors")

    def describe(self) -> dict:
        """What kind of store this is, for /healthz."""
        return {"store": type(self).__name__}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


# --- array encoding shared by both stores -----------------------------------------------

def _pack(arr: np.ndarray) -> tuple[bytes, dict]:
    arr = np.ascontiguousarray(arr)
    return arr.tobytes(), {"dtype": arr.dtype.str, "shape": list(arr.shape)}


def _unpack(buf: bytes | None, spec: dict, where: str) -> np.ndarray:
    if buf is None:
        raise StoreDataError(f"{where}: missing")
    try:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(s) for s in spec["shape"])
        return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError) as e:
        raise StoreDataError(f"{where}: cannot decode ({e})") from None


def _check_run(data: RunData) -> None:
    n_users = len(data.users)
    if data.vectors.shape[0] != n_users or data.seen.shape[0] != n_users:
        raise ValueError(f"run data: {n_users} users but {data.vectors.shape[0]} vectors, {data.seen.shape[0]} rows")


# --- in-process store ----------------------------------------------------------------------

class InMemoryStore(FeatureStore):
    """The embedded store. ``journal``: JSON-lines file of recorded interactions (or None)."""

    def __init__(self, journal: str | Path | None = None):
        self._runs: dict[str, dict] = {}
        self._events: dict[str, dict[str, None]] = {}  # ordered sets
        self._foldin: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
        self._lock = threading.Lock()
        self.journal = Path(journal) if journal else None
        if self.journal is not None:
            if self.journal.exists():
                self._replay(self.journal)
            try:  # fail at start, not at the first POST
                with open(self.journal, "a", encoding="utf-8"):
                    pass
            except OSError as e:
                raise ValueError(f"{self.journal}: cannot write the interaction journal ({e.strerror})") from None

    def _replay(self, path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                user, item = str(rec["user"]), str(rec["item"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                if n == len(lines):  # a torn final write (no newline): drop it, keep the rest
                    warnings.warn(f"{path}:{n}: ignoring a truncated last line", stacklevel=2)
                    continue
                raise StoreDataError(f"{path}:{n}: not an interaction record ({e})") from None
            self._events.setdefault(user, {})[item] = None

    def ping(self) -> None:
        return None

    def describe(self) -> dict:
        return {"store": "memory", "journal": str(self.journal) if self.journal else None}

    def has_run(self, run_id: str) -> bool:
        return run_id in self._runs

    def load_run(self, run_id: str, data: RunData, progress: ProgressFn | None = None) -> None:
        _check_run(data)
        run = {"meta": dict(data.meta), "items": {k: np.asarray(v).copy() for k, v in data.items.items()},
               "index": {u: i for i, u in enumerate(data.users)},
               "vectors": np.asarray(data.vectors, np.float32).copy(), "seen": data.seen.tocsr().copy()}
        with self._lock:
            self._runs[run_id] = run
        if progress:
            progress(len(data.users), len(data.users))

    def _run(self, run_id: str) -> dict:
        try:
            return self._runs[run_id]
        except KeyError:
            raise StoreDataError(f"run {run_id} is not loaded in the in-process store") from None

    def read_items(self, run_id: str) -> tuple[dict, dict[str, np.ndarray]]:
        run = self._run(run_id)
        return dict(run["meta"]), dict(run["items"])

    def read_users(self, run_id: str, users: list[str]) -> list[UserState]:
        run = self._run(run_id)
        out = []
        for u in users:
            events = sorted(self._events.get(u, {}))
            i = run["index"].get(u)
            if i is None:
                out.append(UserState(events=events))
                continue
            seen = run["seen"]
            row = seen.indices[seen.indptr[i]:seen.indptr[i + 1]].astype(np.int64)
            out.append(UserState(i, run["vectors"][i].copy(), row, events))
        return out

    def add_interaction(self, user: str, item: str) -> None:
        with self._lock:
            if self.journal is not None:
                line = json.dumps({"user": user, "item": item, "ts": time.time()}) + "\n"
                with open(self.journal, "a", encoding="utf-8") as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
            self._events.setdefault(user, {})[item] = None

    # fold-in vectors: not journaled; recomputed from the journaled interactions when missing
    def write_foldin(self, run_id: str, user: str, vector: np.ndarray, n_events: int) -> None:
        with self._lock:
            self._foldin[(run_id, user)] = (np.asarray(vector, np.float32).copy(), int(n_events))

    def read_foldin(self, run_id: str, user: str) -> tuple[np.ndarray, int] | None:
        got = self._foldin.get((run_id, user))
        return None if got is None else (got[0].copy(), got[1])


# --- Redis -------------------------------------------------------------------------------

def redact(url: str) -> str:
    """``url`` without its password (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisStore(FeatureStore):
    """A redis-server at ``url`` (``redis://host:port/db``).

    ``timeout``: socket connect/read timeout in seconds; ``cooldown``: after a failure,
    requests fail at once for this long before Redis is tried again (circuit breaker).
    """

    def __init__(self, url: str, prefix: str = "ncf", timeout: float = 0.25, cooldown: float = 0.5,
                 chunk: int = 1000):
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--redis must be a redis:// URL, got {redact(url)!r}")
        self.url, self.prefix, self.cooldown, self.chunk = url, prefix, cooldown, chunk
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._response_error = redis.ResponseError
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.02, base=0.005), 1), health_check_interval=5,
        )
        self._down_until = 0.0
        self._last_error = ""

    def _call(self, fn):
        now = time.monotonic()
        if now < self._down_until:
            raise StoreUnavailable(f"Redis at {redact(self.url)} is unavailable ({self._last_error}); "
                                   f"retrying in {self._down_until - now:.1f}s")
        try:
            result = fn()
        except self._errors as e:
            self._last_error = f"{type(e).__name__}: {e}"
            self._down_until = time.monotonic() + self.cooldown
            raise StoreUnavailable(f"Redis at {redact(self.url)} is unavailable ({self._last_error})") from None
        except self._response_error as e:  # e.g. MISCONF (cannot persist), READONLY replica
            raise StoreUnavailable(f"Redis at {redact(self.url)} refused the command ({e})") from None
        self._down_until = 0.0
        return result

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def ping(self) -> None:
        self._call(self.client.ping)

    def describe(self) -> dict:
        """Store kind, URL (no password) and whether Redis persists writes (append-only file)."""
        try:
            aof = self._call(lambda: self.client.config_get("appendonly")).get("appendonly")
        except (StoreUnavailable, self._response_error):
            aof = None  # CONFIG may be disabled on managed servers
        return {"store": "redis", "url": redact(self.url), "appendonly": aof}

    def has_run(self, run_id: str) -> bool:
        return self._call(lambda: self.client.hget(self._key("run", run_id, "meta"), "complete")) == b"1"

    def load_run(self, run_id: str, data: RunData, progress: ProgressFn | None = None) -> None:
        _check_run(data)
        meta_key = self._key("run", run_id, "meta")
        self._call(lambda: self.client.hset(meta_key, "complete", "0"))
        fields, spec = {}, {}
        for name, arr in data.items.items():
            fields[name], spec[name] = _pack(arr)
        fields["spec"] = json.dumps(spec)
        items_key = self._key("run", run_id, "items")
        self._call(lambda: self.client.delete(items_key) + self.client.hset(items_key, mapping=fields))
        vectors = np.ascontiguousarray(data.vectors, dtype=np.float32)
        seen = data.seen.tocsr()
        n = len(data.users)
        for start in range(0, n, self.chunk):
            pipe = self.client.pipeline(transaction=False)
            for i in range(start, min(n, start + self.chunk)):
                row = seen.indices[seen.indptr[i]:seen.indptr[i + 1]].astype(np.int32)
                pipe.hset(self._key("run", run_id, "u", data.users[i]),
                          mapping={"idx": i, "vec": vectors[i].tobytes(), "seen": row.tobytes()})
            self._call(pipe.execute)
            if progress:
                progress(min(n, start + self.chunk), n)
        meta = {k: json.dumps(v) for k, v in data.meta.items()}
        meta.update(user_dim=str(vectors.shape[1]), complete="1")
        self._call(lambda: self.client.hset(meta_key, mapping=meta))

    def read_items(self, run_id: str) -> tuple[dict, dict[str, np.ndarray]]:
        key = self._key("run", run_id, "items")
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self._key("run", run_id, "meta"))
        pipe.hgetall(key)
        meta_raw, fields = self._call(pipe.execute)
        if meta_raw.get(b"complete") != b"1":
            raise StoreDataError(f"{self._key('run', run_id, 'meta')}: run not loaded (run `ncf store load`)")
        try:
            spec = json.loads(fields[b"spec"])
            meta = {k.decode(): json.loads(v) for k, v in meta_raw.items() if k not in (b"complete",)}
        except (KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreDataError(f"{key}: corrupt run description ({e})") from None
        items = {name: _unpack(fields.get(name.encode()), s, f"{key} field {name!r}") for name, s in spec.items()}
        return meta, items

    def read_users(self, run_id: str, users: list[str]) -> list[UserState]:
        pipe = self.client.pipeline(transaction=False)
        for u in users:
            pipe.hmget(self._key("run", run_id, "u", u), "idx", "vec", "seen")
            pipe.smembers(self._key("events", u))
        replies = self._call(pipe.execute)
        out = []
        for j, u in enumerate(users):
            (idx, vec, seen), events = replies[2 * j], replies[2 * j + 1]
            ev = sorted(e.decode() for e in events)
            if idx is None:
                out.append(UserState(events=ev))
                continue
            where = self._key("run", run_id, "u", u)
            try:
                state = UserState(int(idx), np.frombuffer(vec, np.float32).copy(),
                                  np.frombuffer(seen, np.int32).astype(np.int64), ev)
            except (TypeError, ValueError) as e:
                raise StoreDataError(f"{where}: corrupt user record ({e})") from None
            out.append(state)
        return out

    def add_interaction(self, user: str, item: str) -> None:
        self._call(lambda: self.client.sadd(self._key("events", user), item))

    def write_foldin(self, run_id: str, user: str, vector: np.ndarray, n_events: int) -> None:
        vec = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        key = self._key("run", run_id, "f", user)
        self._call(lambda: self.client.hset(key, mapping={"vec": vec, "n": int(n_events)}))

    def read_foldin(self, run_id: str, user: str) -> tuple[np.ndarray, int] | None:
        key = self._key("run", run_id, "f", user)
        vec, n = self._call(lambda: self.client.hmget(key, "vec", "n"))
        if vec is None or n is None:
            return None
        try:
            return np.frombuffer(vec, np.float32).copy(), int(n)
        except (TypeError, ValueError) as e:
            raise StoreDataError(f"{key}: corrupt fold-in record ({e})") from None

    def close(self) -> None:
        self.client.close()
