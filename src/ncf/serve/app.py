"""The HTTP service: ``create_app(run_dir, store)`` builds a FastAPI app over a run directory.

Per request the service reads the user's features (embedding, training seen-set, items
recorded online) from the ``FeatureStore`` in one batched call, scores with the model's
dense layers held in the process (``ncf.serve.retrieval``), and answers raw ids. Item
features are read from the store once (when the service first needs them) and kept in
memory; user features are never cached, so while Redis is down recommendation requests
fail fast with 503 and recover by themselves when it returns. ``/similar`` needs only
the item embeddings and keeps answering.

Errors are JSON ``{"error": code, "message": text}``: 422 malformed ids or parameters, 404
unknown items, 409 re-ranking asked for but not available (``rerank_unavailable``) or the
user's recorded interactions at their limit (``user_event_limit``), 401 a missing or wrong
API key (``unauthorized``), 413 a request body over the limit (``payload_too_large``), 503
store unavailable (``store_unavailable``; also a write that failed, e.g. a full disk under
the journal: the interaction was not recorded).

Ids follow the one id rule of ``ncf.data.ids`` (the reader's): surrounding whitespace is
stripped, integer ids are int64, string ids are kept exactly; URL-encode them in paths
(``a%2Fb`` is the id ``a/b``). Interactions are recorded per catalogue (``catalog_id``), so
services of other catalogues sharing a store never see them.

``rerank=true`` applies the run's ``rerank.json`` multipliers (``ncf.rerank.lagrangian.
PerRequestReranker``, issue 8) to the request: items come out ordered by utility, each with
its model ``score`` and its ``utility``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ncf.data.ids import canonical_id
from ncf.data.interactions import IdMap
from ncf.errors import ConfigError
from ncf.recommend import Recommender, RerankUnavailable, UnknownItemError, top_k
from ncf.rerank.lagrangian import load_reranker
from ncf.serve.ann import CHECK_CANDIDATES as ANN_CHECK_CANDIDATES
from ncf.serve.ann import CHECK_USERS as ANN_CHECK_USERS
from ncf.serve.ann import CHECK_WARN as ANN_CHECK_WARN
from ncf.serve.ann import DEFAULT_CANDIDATES as ANN_CANDIDATES
from ncf.serve.ann import AnnIndex
from ncf.serve.ann import resolve as resolve_ann
from ncf.serve.foldin import FoldIn, check_prior, run_prior
from ncf.serve.guard import ApiKey, BodyLimit, Unauthorized, Utf8Path
from ncf.serve.limits import MAX_BODY_BYTES, MAX_EVENTS_PER_USER, MAX_ITEMS_PER_REQUEST
from ncf.serve.retrieval import make_ranker
from ncf.serve.store import (
    EventLimitReached,
    FeatureStore,
    InMemoryStore,
    RunData,
    StoreDataError,
    StoreUnavailable,
    StoreWriteError,
)
from ncf.serve.web import mount_web

log = logging.getLogger("ncf.serve")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# --- response and request bodies (the OpenAPI schema) --------------------------------------

class ScoredItem(BaseModel):
    item: StrictInt | StrictStr
    score: float  # the model's score (a logit for neural models); popularity count for fallbacks
    title: str | None = None
    utility: float | None = None  # with rerank=true: relevance * weight + offset (issue 8)


class Recommendations(BaseModel):
    user: StrictInt | StrictStr
    items: list[ScoredItem]
    fallback: bool
    reranked: bool = False


class Similar(BaseModel):
    item: StrictInt | StrictStr
    items: list[ScoredItem]


class InteractionIn(BaseModel):
    """One interaction (``item``) or several at once (``items``, at most the service's
    ``max_items_per_request``); exactly one of the two."""

    model_config = ConfigDict(extra="forbid")
    item: StrictInt | StrictStr | None = None
    items: list[StrictInt | StrictStr] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.item is None) == (self.items is None):
            raise ConfigError("give exactly one of item and items")
        return self


class InteractionOut(BaseModel):
    user: StrictInt | StrictStr
    item: StrictInt | StrictStr | None = None
    items: list[StrictInt | StrictStr] | None = None
    stored: bool


class ErrorBody(BaseModel):
    error: str
    message: str


# --- the service, without HTTP -------------------------------------------------------------

STORE_SCHEMA = 1  # bump when what the service writes to the store changes


def run_fingerprint(run_dir: Path) -> str:
    """Short hash of the files that define what the store must hold for this run (and of
    the store schema), so a retrained model or a new layout never reads stale features."""
    h = hashlib.sha256(f"schema {STORE_SCHEMA}".encode())
    for name in ("config.json", "model.safetensors", "idmap.json", "train.safetensors"):
        path = Path(run_dir) / name
        if path.exists():
            h.update(name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def catalog_id(item_map: IdMap) -> str:
    """Short hash of a catalogue (the raw item ids, in index order): the events namespace of
    every run trained on it, so retrainings share recorded interactions and other catalogues
    (other datasets whose raw ids happen to overlap) never see them."""
    return "c" + hashlib.sha256(json.dumps(item_map.to_json()).encode()).hexdigest()[:15]


class OnlineService:
    """Recommendations from a run directory with user features read from ``store``.

    ``events_namespace``: where recorded interactions live in the store (default: the run's
    ``catalog_id``); ``max_events_per_user``: recorded interactions a user may have (0: no limit);
    ``max_items_per_request``: interactions one POST may record."""

    def __init__(self, run_dir: str | Path, store: FeatureStore, candidates: int = 0, max_k: int = 1000,
                 foldin: bool = True, ann: str = "auto", events_namespace: str | None = None,
                 max_events_per_user: int = 0, max_items_per_request: int = MAX_ITEMS_PER_REQUEST,
                 foldin_prior: float | None = None):
        self.run_dir = Path(run_dir)
        self.rec = Recommender.from_run(self.run_dir)
        self.events_ns = catalog_id(self.rec.item_map) if events_namespace is None else events_namespace
        if not _NAMESPACE.fullmatch(self.events_ns):
            raise ConfigError(f"events namespace {self.events_ns!r}: expected 1-64 letters, digits, _.-")
        if max_events_per_user < 0:
            raise ConfigError(f"max_events_per_user must be >= 0, got {max_events_per_user}")
        self.max_events = max_events_per_user
        if max_items_per_request < 1:
            raise ConfigError(f"max_items_per_request must be >= 1, got {max_items_per_request}")
        self.max_items = max_items_per_request
        self.ranker = make_ranker(self.rec.model)
        # recorded interactions move the user's recommendations (ncf.serve.foldin); off: they only filter
        # the Newton fold-in's prior: given, else the run's foldin.json (chosen on validation), else 0.1
        prior = run_prior(self.run_dir) if foldin_prior is None else check_prior(foldin_prior, "--fold-in-prior")
        self.foldin = FoldIn(self.rec.model, self.ranker, self.rec.item_map.get, prior=prior) if foldin else None
        if candidates < 0:
            raise ConfigError(f"candidates must be >= 0, got {candidates}")
        if candidates and not self.ranker.can_retrieve:
            raise ConfigError(f"--candidates needs a gmf, mlp or neumf model, not {self.rec.model.name!r}")
        if max_k < 1:
            raise ConfigError(f"max_k must be >= 1, got {max_k}")
        self.store, self.candidates, self.max_k = store, candidates, max_k
        self.run_id = run_fingerprint(self.run_dir)
        # approximate first stage (ncf.serve.ann): HNSW over the dot-product rows, built in ensure_ready
        self.use_ann = resolve_ann(ann, self.rec.n_items, self.ranker.can_retrieve)
        self.ann = None
        self.int_ids = {"user": self.rec.user_map.integer, "item": self.rec.item_map.integer}
        self.rec.reranker, self.rec.rerank_reason = load_reranker(self.run_dir)
        if self.rec.reranker is None and (self.run_dir / "rerank.json").exists():
            log.warning("re-ranking disabled: %s", self.rec.rerank_reason)
        self._ready = False
        self._lock = threading.Lock()

    def run_data(self) -> RunData:
        meta = {"model": self.rec.model.name, "n_users": self.rec.model.n_users,
                "n_items": self.rec.model.n_items, "run_dir": str(self.run_dir)}
        return RunData(meta, self.ranker.item_features(), [str(r) for r in self.rec.user_map.raw_ids],
                       self.ranker.user_vectors(), self.rec.seen)

    def load_store(self, progress=None) -> None:
        """Write this run's user and item features into the store (``ncf store load``)."""
        self.store.load_run(self.run_id, self.run_data(), progress)

    def ensure_ready(self, reload: bool = False) -> None:
        """Load the run into the store if it lacks it, then bind the item features."""
        if self._ready and not reload:
            return
        with self._lock:
            if self._ready and not reload:
                return
            self._ready = False
            if not self.store.has_run(self.run_id):
                log.warning("store lacks run %s: loading it from %s", self.run_id, self.run_dir)
                self.load_store()
            meta, items = self.store.read_items(self.run_id)
            if meta.get("n_items") != self.rec.n_items:
                raise StoreDataError(f"store run {self.run_id}: {meta.get('n_items')} items, "
                                     f"the model has {self.rec.n_items}")
            try:
                self.ranker.bind(items)
            except ValueError as e:
                raise StoreDataError(f"store run {self.run_id}: {e}") from None
            if self.use_ann:  # loaded from the run directory, or built (and persisted) from the rows
                self.ann = AnnIndex.load_or_build(self.run_dir, self.ranker.retrieval_key(), self._ann_inputs)
                self._ann_check()
            elif self.candidates and self.ranker.can_retrieve:
                self.ranker.retrieval_rows()  # the first stage's rows, before the first request
            self._ready = True

    def _ann_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """The first stage's rows, and the queries of (a sample of) the run's users, which set the
        index's per-coordinate scale."""
        users = self.ranker.user_vectors()
        sample = np.random.default_rng(0).permutation(len(users))[:10_000]
        return self.ranker.retrieval_rows(), self.ranker.retrieval_queries(users[np.sort(sample)])

    def _ann_check(self, n_users: int = ANN_CHECK_USERS) -> None:
        """The index's self-check, once per index (kept in ``DIR/ann.json``): for ``n_users`` of
        the run's users (outside the sample the rows were fitted on), the share of the exact top
        10 that HNSW + exact re-ranking keeps, at several candidate counts; a warning when the
        service's own count keeps less than ``ANN_CHECK_WARN`` (raise ``--candidates``)."""
        want = max(self.candidates or ANN_CANDIDATES, 10)
        check = self.ann.meta.get("check")
        if check is None or str(want) not in check["overlap@10"] and want < self.rec.n_items:
            ranker, vectors = self.ranker, self.ranker.user_vectors()
            pool = np.setdiff1d(np.arange(len(vectors)), ranker.retrieval_sample_indexes())
            users = np.sort(np.random.default_rng(1).permutation(pool)[:n_users])
            counts = sorted({c for c in (*ANN_CHECK_CANDIDATES, want) if c < self.rec.n_items})
            kept = {c: [] for c in counts}
            for u in users:
                exclude = np.zeros(self.rec.n_items, bool)
                exclude[self.rec.seen_items(int(u))] = True
                exact = set(top_k(ranker.score(vectors[u]), exclude, 10).tolist())
                query = ranker.retrieval_query(vectors[u])
                for c in counts:
                    cand = self.ann.search(query, c, exclude)
                    top = cand[top_k(ranker.score(vectors[u], cand), None, 10)]
                    kept[c].append(len(exact & set(top.tolist())) / max(1, len(exact)))
            check = {"users": len(users), "overlap@10": {str(c): round(float(np.mean(v)), 4) for c, v in kept.items()}}
            self.ann.meta["check"] = check
            try:
                self.ann.save_meta(self.run_dir)
            except OSError as e:
                log.warning("cannot write the ANN self-check to %s (%s)", self.run_dir, e)
        got = check["overlap@10"].get(str(want))
        log.info("ANN self-check on %d users, overlap@10 with exact ranking by candidates: %s",
                 check["users"], check["overlap@10"])
        if got is not None and got < ANN_CHECK_WARN:
            log.warning("the ANN first stage keeps %.2f of the exact top 10 with %d candidates (self-check on %d "
                        "users: %s): raise --candidates", got, want, check["users"], check["overlap@10"])

    def parse_id(self, text, what: str) -> str:
        """The canonical string of a raw id under the one id rule (``ncf.data.ids``): the key
        the store uses. 422 when it cannot be an id of this model's kind."""
        try:
            return str(canonical_id(text, self.int_ids[what]))
        except ValueError as e:
            kind = "integers (int64)" if self.int_ids[what] else "strings"
            message = f"malformed {what} id {str(text)[:64]!r}: {e} (this model's {what} ids are {kind})"
            raise ApiError(422, "malformed_id", message) from None

    def _raw(self, canonical: str, what: str):
        return int(canonical) if self.int_ids[what] else canonical

    def _item_index(self, item: str) -> int:
        idx = self.rec.item_map.get(item)
        if idx is None:
            raise ApiError(404, "unknown_item", f"unknown item {self._raw(item, 'item')!r}: not in the model's catalog")
        return idx

    def read_user(self, user: str):
        state = self.store.read_users(self.run_id, [user], ns=self.events_ns)[0]
        if state.index is None and self.rec.user_map.get(user) is not None:
            # the model knows this user but the store does not: it lost its data (flushed, or
            # restarted without persistence); reload the run once and read again
            self.ensure_ready(reload=True)
            state = self.store.read_users(self.run_id, [user], ns=self.events_ns)[0]
            if state.index is None:
                raise StoreDataError(f"user {user!r} is in the model but not in the store after a reload")
        if state.vector is not None and len(state.vector) != self.ranker.user_dim:
            raise StoreDataError(f"user {user!r}: stored vector has {len(state.vector)} values, "
                                 f"the model needs {self.ranker.user_dim}")
        return state

    def recommend(self, user_text: str, k: int, rerank: bool = False) -> dict:
        """The store's user vector scored by the ranker, then the recommender's one slate
        (seen and recorded items left out; popularity for users the model does not know)."""
        user = self.parse_id(user_text, "user")
        if rerank and self.rec.reranker is None:
            raise ApiError(409, "rerank_unavailable", f"re-ranking not available: {self.rec.rerank_reason}")
        self.ensure_ready()
        state = self.read_user(user)
        exclude = self.rec.items_mask(state.events)
        vector, scores = state.vector, None
        if self.foldin is not None and state.events:  # the recorded interactions move the user
            folded, scores = self.foldin.current(self.store, self.run_id, user, state)
            vector = folded if folded is not None else vector
        if state.index is None and vector is None and scores is None:
            return {"user": self._raw(user, "user"), "items": self.rec.popular(k, exclude),
                    "fallback": True, "reranked": False}
        exclude[state.seen] = True
        candidates = None
        if scores is None:
            if self.ann is not None:  # approximate first stage, then the exact model on its candidates
                want = max(self.candidates or ANN_CANDIDATES, k)
                candidates = self.ann.search(self.ranker.retrieval_query(vector), want, exclude)
            elif self.candidates and self.ranker.can_retrieve and self.candidates < self.rec.n_items:
                # two stages: dot-product retrieval of the candidates, then the exact model on them
                candidates = top_k(self.ranker.retrieval_scores(vector), exclude, max(self.candidates, k))
            scores = self.ranker.score(vector, candidates)
        try:
            items = self.rec.slate(scores, exclude, k, rerank, candidates)
        except RerankUnavailable as e:
            raise ApiError(409, "rerank_unavailable", str(e)) from None
        raw = self._raw(user, "user") if state.index is None else self.rec.user_map.raw(state.index)
        return {"user": raw, "items": items, "fallback": False, "reranked": rerank}

    def similar(self, item_text: str, k: int) -> dict:
        item = self.parse_id(item_text, "item")
        self._item_index(item)
        try:
            items = self.rec.similar(item, k)
        except UnknownItemError as e:
            raise ApiError(404, "unknown_item", str(e.args[0])) from None
        return {"item": self._raw(item, "item"), "items": items}

    def record(self, user_text: str, item_value) -> dict:
        user = self.parse_id(user_text, "user")
        item = self.parse_id(item_value, "item")
        idx = self._item_index(item)
        try:
            self.store.add_interaction(user, str(self.rec.item_map.raw(idx)), ns=self.events_ns,
                                       max_events=self.max_events)
        except EventLimitReached as e:
            raise ApiError(409, "user_event_limit", str(e)) from None
        if self.foldin is not None:  # inside the request: the next GET sees the new vector
            self.foldin.update(self.store, self.run_id, user, self.read_user(user))
        return {"user": self._raw(user, "user"), "item": self.rec.item_map.raw(idx), "stored": True}

    def record_many(self, user_text: str, item_values: list) -> dict:
        """Several interactions of one user: all ids are checked before anything is written; a
        store failure part-way leaves the earlier ones recorded (recording is idempotent: retry
        the whole request)."""
        if len(item_values) > self.max_items:
            raise ApiError(422, "too_many_items", f"{len(item_values)} interactions in one request; "
                                                  f"at most {self.max_items} (--max-items-per-request)")
        user = self.parse_id(user_text, "user")
        raws = [self.rec.item_map.raw(self._item_index(self.parse_id(v, "item"))) for v in item_values]
        for raw in raws:
            try:
                self.store.add_interaction(user, str(raw), ns=self.events_ns, max_events=self.max_events)
            except EventLimitReached as e:
                raise ApiError(409, "user_event_limit", f"{e}; the items before {raw!r} were recorded") from None
        if self.foldin is not None:  # one fold-in for the whole batch
            self.foldin.update(self.store, self.run_id, user, self.read_user(user))
        return {"user": self._raw(user, "user"), "items": raws, "stored": True}


# --- metrics ------------------------------------------------------------------------------

class _Metrics:
    """Prometheus counters on a registry of the app's own (several apps may share a process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("ncf_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("ncf_http_request_duration_seconds", "Request latency by route",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.0005, .001, .002, .003, .005, .0075, .01, .02, .05, .1, .25, .5, 1, 2.5))
        self.store_errors = Counter("ncf_store_unavailable", "Requests answered 503: store unavailable",
                                    registry=self.registry)
        self.write_errors = Counter("ncf_store_write_errors", "Interactions not recorded: the store's write failed",
                                    registry=self.registry)
        self.fallbacks = Counter("ncf_fallback_recommendations", "Popularity answers to unknown users",
                                 registry=self.registry)


class _MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): counts and times each request."""

    def __init__(self, app, metrics: _Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path_format", None) or getattr(route, "path", "unmatched")  # {id}, not {id:path}
            self.metrics.requests.labels(scope["method"], path, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


# --- the FastAPI app -------------------------------------------------------------------------

def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def create_app(run_dir: str | Path, store: FeatureStore | None = None, candidates: int = 0,
               max_k: int = 1000, foldin: bool = True, ann: str = "auto", *, api_key: str | None = None,
               api_key_reads: bool = False, max_body_bytes: int = MAX_BODY_BYTES,
               max_events_per_user: int = MAX_EVENTS_PER_USER, max_items_per_request: int = MAX_ITEMS_PER_REQUEST,
               events_namespace: str | None = None, foldin_prior: float | None = None) -> FastAPI:
    """The service over ``run_dir``; ``store`` defaults to an in-process store (no journal);
    ``foldin``: recorded interactions update the user's vector (``ncf.serve.foldin``);
    ``ann``: approximate first stage (``ncf.serve.ann``): auto, on or off; ``foldin_prior``: the
    Newton fold-in's pull towards the starting vector (default: the run's ``foldin.json``, else 0.1).

    ``api_key``: required (``X-API-Key`` header) on the write endpoints, and on the reads too
    with ``api_key_reads``; ``max_body_bytes``: larger request bodies get 413;
    ``max_events_per_user``, ``max_items_per_request``, ``events_namespace``: see :class:`OnlineService`."""
    if api_key_reads and not api_key:
        raise ConfigError("--api-key-reads needs an API key (--api-key or $NCF_API_KEY)")
    service = OnlineService(run_dir, store if store is not None else InMemoryStore(), candidates, max_k, foldin,
                            ann, events_namespace, max_events_per_user, max_items_per_request, foldin_prior)
    metrics = _Metrics()
    errors = {422: {"model": ErrorBody}, 503: {"model": ErrorBody}}
    guard = ApiKey(api_key, api_key_reads) if api_key else None
    denied = {401: {"model": ErrorBody, "description": "missing or wrong API key"}}
    write_deps = [guard.dependency()] if guard else []
    read_deps = [guard.dependency()] if guard and guard.reads else []
    read_errors = {**errors, **denied} if read_deps else errors
    write_errors = {**errors, **denied, 404: {"model": ErrorBody}, 409: {"model": ErrorBody},
                    413: {"model": ErrorBody}, 415: {"model": ErrorBody, "description": "a body not sent as JSON"}}
    app = FastAPI(title="ncf recommender", version="1", docs_url=None, redoc_url=None,  # /docs: mount_web
                  description=f"Recommendations from the {service.rec.model.name} run in {service.run_dir.name}.")
    app.state.service, app.state.metrics = service, metrics
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Utf8Path)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error(e.status, e.code, e.message)

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, e: StoreUnavailable):
        metrics.store_errors.inc()
        if isinstance(e, StoreWriteError):
            metrics.write_errors.inc()
            log.error("%s", e)
        message = str(e)
        if request.method == "POST":  # the store may still apply a write it did not confirm (docs/RELIABILITY.md)
            message += ("; the interaction is not known to be recorded: retry the same request (an item recorded "
                        "twice for a user is kept once)")
        return _error(503, "store_unavailable", message, {"Retry-After": "1"})

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, e: Unauthorized):
        return _error(401, "unauthorized", str(e), {"WWW-Authenticate": "ApiKey"})

    @app.exception_handler(StoreDataError)
    async def _store_data(request: Request, e: StoreDataError):
        log.error("store data error: %s", e)
        return _error(500, "store_data", str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype.lower() and any(tuple(err["loc"]) == ("body",) for err in e.errors()):
            # a JSON body labelled otherwise is not parsed at all: say so, not "not a dictionary"
            return _error(415, "unsupported_media_type", "the body must be a JSON object sent with "
                          f"Content-Type: application/json (this request says {ctype or 'no Content-Type'})")
        parts = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        return _error(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 413: "payload_too_large"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail))

    K = Query(10, ge=1, le=max_k, description=f"number of items, 1..{max_k}")

    # Reads run inline on the event loop (async def): a request costs about a millisecond of CPU
    # and one store round trip bounded by the store's socket timeout, and skipping the
    # threadpool hand-off measured ~25 % less CPU per request and a shorter tail (RESULTS.md).
    # The POST stays in the threadpool: the in-process store fsyncs its journal.

    # ``:path``: an id may hold a "/" (URL-encoded as %2F, decoded before routing)
    @app.get("/v1/users/{user_id:path}/recommendations", response_model=Recommendations, responses=read_errors,
             response_model_exclude_none=True, dependencies=read_deps)
    async def recommendations(user_id: str, k: int = K,
                              rerank: bool = Query(False, description="apply DIR/rerank.json (issue 8)")):
        out = service.recommend(user_id, k, rerank)
        if out["fallback"]:
            metrics.fallbacks.inc()
        return out

    @app.get("/v1/items/{item_id:path}/similar", response_model=Similar,
             responses={**read_errors, 404: {"model": ErrorBody}}, response_model_exclude_none=True,
             dependencies=read_deps)
    async def similar(item_id: str, k: int = K):
        return service.similar(item_id, k)

    @app.post("/v1/users/{user_id:path}/interactions", response_model=InteractionOut, status_code=201,
              responses=write_errors, dependencies=write_deps, response_model_exclude_none=True)
    def interactions(user_id: str, body: InteractionIn = Body(...)):
        if body.items is not None:
            return service.record_many(user_id, body.items)
        return service.record(user_id, body.item)

    mount_web(app, service, read_deps)  # the page at /, /v1/info, /v1/users/{id}/history, offline /docs

    @app.get("/healthz")
    def healthz():
        info = {"run": service.run_id, "model": service.rec.model.name, "events_namespace": service.events_ns,
                "api_key": "writes and reads" if read_deps else "writes" if write_deps else "none",
                **service.store.describe()}
        try:
            service.store.ping()
            service.ensure_ready()
        except (StoreUnavailable, StoreDataError) as e:
            return JSONResponse({"status": "unavailable", "message": str(e), **info}, status_code=503)
        return {"status": "ok", **info}

    @app.get("/metrics")
    def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    warning = service.store.describe().get("warning")
    if warning:
        log.warning("store: %s", warning)
    try:  # warm up now where the store is reachable; otherwise on the first request
        service.ensure_ready()
    except StoreUnavailable as e:
        log.warning("store unavailable at start, will retry on requests: %s", e)
    return app
