"""FeatureStore: where the online service looks up user and item features.

Two implementations behind one interface (and one test suite):

- ``RedisStore``: a redis-server. Bulk loads go through chunked pipelines; a request
  reads everything about its user (embedding, training seen-set, online interactions)
  in one pipelined round trip. Short socket timeouts, one quick retry and a circuit
  breaker make requests fail fast (``StoreUnavailable`` -> HTTP 503) while Redis is down;
  the connection pool reconnects by itself once it is back.
- ``InMemoryStore``: dicts in the process, the embedded default. Interactions recorded
  online are appended to an optional journal file (JSON lines, fsynced before the write is
  acknowledged), replayed on start, so they survive a restart of the service. A torn last
  line (a crash mid-write) is cut off at start and kept in ``JOURNAL.torn``; a failed write
  is rolled back (``StoreWriteError``, HTTP 503) so that the file stays whole.

Recorded interactions live in an *events namespace* (``ns``), one per catalogue: the service
passes a hash of its item id map (``ncf.serve.app.catalog_id``), so models of the same
catalogue (retrainings) share a user's events and models of other catalogues never see them.
``ns=""`` is the namespace of stores written before namespaces existed.

Redis layout (``prefix`` defaults to ``ncf``; ``rid`` is the run's fingerprint)::

    {prefix}:run:{rid}:meta      hash  model, n_users, n_items, user_dim, complete
    {prefix}:run:{rid}:items     hash  one field per item array (raw bytes) + "spec" (JSON dtypes/shapes)
    {prefix}:run:{rid}:u:{user}  hash  idx, vec (float32 bytes), seen (int32 item indexes)
    {prefix}:ev:{ns}:{user}      zset  raw item ids recorded through the API, per events namespace,
                                       scored by the time first recorded (read in that order)
    {prefix}:events:{user}       set   the same for ns "" (stores written before namespaces)
    {prefix}:run:{rid}:f:{user}  hash  vec (float32 bytes), n: the user's fold-in vector and the
                                       number of recorded items it covers (ncf.serve.foldin)

``describe()`` says how durable an acknowledged interaction is (``durability``): ``fsync``
(in-process journal), ``aof`` (Redis append-only file; ``appendfsync`` says how often it is
synced), ``snapshot`` (Redis RDB only: writes since the last snapshot are lost in a crash),
``volatile`` (nothing survives a restart) or ``unknown`` (Redis refuses CONFIG GET).

Raw ids are keyed by their string form.
"""

from __future__ import annotations

import json
import logging
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

from ncf.errors import ConfigError, NcfError

log = logging.getLogger("ncf.serve")


class StoreUnavailable(NcfError, RuntimeError):
    """The store cannot be reached now (the service answers 503 and retries later)."""


class StoreDataError(NcfError, ValueError):
    """The store holds something that cannot be decoded; the message names the key."""


class StoreWriteError(StoreUnavailable):
    """A write failed (full disk, read-only file): nothing was recorded (HTTP 503)."""


class EventLimitReached(NcfError, ValueError):
    """The user already has ``max_events`` recorded interactions (HTTP 409)."""


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
    def read_users(self, run_id: str, users: list[str], ns: str = "") -> list[UserState]:
        """One ``UserState`` per raw user id, in one batched read; events from namespace ``ns``."""

    @abstractmethod
    def add_interaction(self, user: str, item: str, ns: str = "", max_events: int = 0) -> None:
        """Record that ``user`` interacted with ``item`` (raw ids) in events namespace ``ns``,
        durably, before returning. ``max_events`` > 0: raise ``EventLimitReached`` instead when
        the user already has that many other items recorded (an item already there is fine)."""

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
        raise ConfigError(f"run data: {n_users} users but {data.vectors.shape[0]} vectors, {data.seen.shape[0]} rows")


# --- in-process store ----------------------------------------------------------------------

class InMemoryStore(FeatureStore):
    """The embedded store. ``journal``: JSON-lines file of recorded interactions (or None)."""

    def __init__(self, journal: str | Path | None = None):
        self._runs: dict[str, dict] = {}
        self._events: dict[tuple[str, str], dict[str, None]] = {}  # (ns, user) -> ordered set
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
                raise ConfigError(f"{self.journal}: cannot write the interaction journal ({e.strerror})") from None

    def _replay(self, path: Path) -> None:
        data = path.read_bytes()
        *lines, tail = data.split(b"\n")  # ``tail``: what follows the last newline (a torn write)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rec = self._parse(line)
            if rec is None:
                raise StoreDataError(f"{path}:{n}: not an interaction record ({line[:80]!r}); only a last "
                                     "line can be torn by a crash (an older ncf appended onto torn lines, or the "
                                     "file was edited): move this line out of the journal to start")
            self._apply(*rec)
        if not tail.strip():
            return
        rec = self._parse(tail)
        if rec is not None:  # a whole record whose newline was not written: close the line
            self._apply(*rec)
            with open(path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            return
        # a crash mid-write: keep the torn bytes aside, cut the file back to its last whole record
        side = path.with_name(path.name + ".torn")
        with open(side, "ab") as f:
            f.write(tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
            f.flush()
            os.fsync(f.fileno())
        message = (f"{path}:{len(lines) + 1}: torn last line (a write cut short by a crash; it was never "
                   f"acknowledged): removed, its {len(tail)} bytes kept in {side}")
        log.warning(message)
        warnings.warn(message, stacklevel=3)

    @staticmethod
    def _parse(line: bytes) -> tuple[str, str, str] | None:
        try:
            rec = json.loads(line)
            return str(rec.get("ns", "")), str(rec["user"]), str(rec["item"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            return None

    def _apply(self, ns: str, user: str, item: str) -> None:
        self._events.setdefault((ns, user), {})[item] = None

    def ping(self) -> None:
        return None

    def describe(self) -> dict:
        if self.journal is None:
            return {"store": "memory", "journal": None, "durability": "volatile",
                    "warning": "no journal (--no-journal): recorded interactions are lost when the service stops"}
        return {"store": "memory", "journal": str(self.journal), "durability": "fsync"}

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

    def read_users(self, run_id: str, users: list[str], ns: str = "") -> list[UserState]:
        run = self._run(run_id)
        out = []
        for u in users:
            # recording order (sequence models read it): those recorded before namespaces first
            events = list(dict.fromkeys([*self._events.get(("", u), {}), *self._events.get((ns, u), {})]))
            i = run["index"].get(u)
            if i is None:
                out.append(UserState(events=events))
                continue
            seen = run["seen"]
            row = seen.indices[seen.indptr[i]:seen.indptr[i + 1]].astype(np.int64)
            out.append(UserState(i, run["vectors"][i].copy(), row, events))
        return out

    def add_interaction(self, user: str, item: str, ns: str = "", max_events: int = 0) -> None:
        with self._lock:
            events = self._events.get((ns, user), {})
            if item in events:
                return
            if max_events > 0 and len(events) >= max_events:
                raise EventLimitReached(f"user {user!r} already has {len(events)} recorded interactions "
                                        f"(the limit is {max_events})")
            if self.journal is not None:
                rec = {"user": user, "item": item, "ts": time.time(), **({"ns": ns} if ns else {})}
                self._append(json.dumps(rec).encode() + b"\n")
            self._apply(ns, user, item)

    def _append(self, line: bytes) -> None:
        """Append one record and fsync it; on failure cut the file back to where it was, so
        that a later write never lands on a torn line, and raise ``StoreWriteError``."""
        try:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreWriteError(f"{self.journal}: cannot open the interaction journal ({e.strerror})") from None
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass  # e.g. a device; the next start repairs a torn tail
                raise StoreWriteError(f"{self.journal}: cannot write the interaction journal ({e.strerror}); "
                                      "the interaction was not recorded") from None
        finally:
            os.close(fd)

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
            raise ConfigError(f"--redis must be a redis:// URL, got {redact(url)!r}")
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
        """Store kind, URL (no password) and how durable a recorded interaction is: Redis's
        ``appendonly``, ``appendfsync`` and ``save`` settings, and a ``warning`` when a restart
        of Redis can lose acknowledged interactions."""
        info = {"store": "redis", "url": redact(self.url)}
        try:
            conf = {}
            for name in ("appendonly", "appendfsync", "save"):
                conf.update(self._call(lambda name=name: self.client.config_get(name)))
        except (StoreUnavailable, self._response_error) as e:  # down, or CONFIG disabled (managed servers)
            return {**info, "appendonly": None, "durability": "unknown",
                    "warning": f"cannot read Redis's persistence settings ({e}); make sure it runs with "
                               "appendonly yes (docs/RELIABILITY.md)"}
        conf = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                for k, v in conf.items()}
        info.update(appendonly=conf.get("appendonly"), appendfsync=conf.get("appendfsync"), save=conf.get("save"))
        if conf.get("appendonly") == "yes":
            info["durability"] = "aof"
            if conf.get("appendfsync") == "no":
                info["warning"] = ("appendfsync no: the OS decides when the append-only file reaches the disk; a "
                                   "machine crash can lose recent interactions (appendfsync always or everysec)")
        elif conf.get("save"):
            info.update(durability="snapshot",
                        warning=f"appendonly no, snapshots only (save {conf['save']!r}): a crash of Redis loses "
                                "the interactions recorded since the last snapshot (use appendonly yes)")
        else:
            info.update(durability="volatile",
                        warning="Redis runs without persistence (appendonly no, no save points): a restart of "
                                "Redis loses every recorded interaction (use appendonly yes)")
        return info

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

    def _events_key(self, user: str, ns: str) -> str:
        return self._key("ev", ns, user) if ns else self._key("events", user)

    def read_users(self, run_id: str, users: list[str], ns: str = "") -> list[UserState]:
        pipe = self.client.pipeline(transaction=False)
        for u in users:
            pipe.hmget(self._key("run", run_id, "u", u), "idx", "vec", "seen")
            # the namespace's events, and those recorded before namespaces existed (ns ""); two
            # reads rather than SUNION, whose keys a Redis cluster may hold on different nodes
            if ns:  # in recording order (a sorted set scored by time); then the older unordered set
                pipe.zrange(self._events_key(u, ns), 0, -1)
            pipe.smembers(self._events_key(u, ""))
        replies = self._call(pipe.execute)
        per_user = 3 if ns else 2
        out = []
        for j, u in enumerate(users):
            (idx, vec, seen), *parts = replies[per_user * j: per_user * (j + 1)]
            recorded = [e.decode() for e in parts[0]] if ns else []
            legacy = sorted(e.decode() for e in parts[-1])  # before namespaces: no order kept
            ev = list(dict.fromkeys([*legacy, *recorded]))
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

    # SADD unless the set already holds ARGV[2] others (ARGV[2] = 0: no limit); -1 when refused
    # namespaced events: a sorted set scored by the time of the first recording (ZADD NX), so
    # that they read back in recording order; the limit is checked in the same atomic step
    _ADD = ("if tonumber(ARGV[2]) > 0 and redis.call('ZSCORE', KEYS[1], ARGV[1]) == false "
            "and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end "
            "return redis.call('ZADD', KEYS[1], 'NX', ARGV[3], ARGV[1])")

    def add_interaction(self, user: str, item: str, ns: str = "", max_events: int = 0) -> None:
        key = self._events_key(user, ns)
        if not ns:  # the layout before namespaces (a set): kept for stores written then
            self._call(lambda: self.client.sadd(key, item))
            return
        if self._call(lambda: self.client.eval(self._ADD, 1, key, item, max_events, repr(time.time()))) == -1:
            raise EventLimitReached(f"user {user!r} already has {max_events} recorded interactions "
                                    f"(the limit is {max_events})")

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
