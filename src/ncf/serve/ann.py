"""Approximate retrieval for large catalogues (issue 18): a faiss HNSW index over the
two-stage dot-product rows of ``NCFRanker`` (``[q_i ; J_i ; b_i]``, see ``ncf.serve.retrieval``).

The first stage ranks items by the dot product ``row_i . x_u``; HNSW searches by distance,
so the rows are centred (the mean row moves every item's score by the same amount: the
ranking is unchanged) and lifted to ``[row_i ; sqrt(R² - |row_i|²)]`` (R the largest row norm),
the query to ``[x_u ; 0]``: then ``|lift(row_i) - lift(x_u)|² = R² + |x_u|² - 2 row_i . x_u``,
and the nearest rows are exactly those with the largest dot products (Bachrach et al. 2014).
Before the lift, each coordinate j is rescaled, rows by s_j and queries by 1 / s_j (dot
products unchanged), with s_j = sqrt(rms(query_j) / rms(row_j)) over a sample of the run's own
user queries: otherwise coordinates that barely move the score (large in the rows, small in
every query: the MLP Jacobian next to the constant 1 of the bias column) dominate the
distances and the graph search wanders (on a random 20,000-item NeuMF with the rows of the
first version, expanded at the mean user: top 10 among 200 candidates 0.68 of exact without
the rescaling, 0.88 with it, the dot product's own ceiling 0.89; with today's rows on a
random 100,000-item NeuMF: 0.959 without, 0.973 with).
The candidates it returns are ranked by the exact model, as with exact retrieval.

The index is built when the service binds the store's item features, and written beside
the run (``DIR/ann.faiss`` + ``DIR/ann.json``), keyed by a fingerprint of what the rows are
computed from (``NCFRanker.retrieval_key``) and the HNSW parameters, so that a restart loads
it without computing the rows or building it again. Build cost: M and efConstruction set the
graph's quality and the build time (on a random million-item NeuMF, one thread, under load:
M 16 / efConstruction 40 in 193 s kept 0.946 of the exact top 10 among 500 candidates, M 16 / 80
in 454 s 0.952, M 32 / 40 in 367 s 0.977, the dot product's own ceiling 0.979), hence M 32,
efConstruction 40; the build uses faiss's OpenMP threads (one per core unless
``faiss.omp_set_num_threads`` or ``build(threads=)`` says otherwise). Searches are one query
at a time (faiss parallelises over queries, so one thread).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ncf.errors import ConfigError

log = logging.getLogger("ncf.serve")

AUTO_MIN_ITEMS = 100_000  # --ann auto: HNSW from this catalogue size on (exact scans below it)
DEFAULT_CANDIDATES = 500  # candidates ranked by the exact model when --candidates is not given
DEFAULT_M = 32  # HNSW graph degree
DEFAULT_EF_CONSTRUCTION = 40  # HNSW build beam (M matters more than this: docs/RESULTS.md, issue 18)
CHECK_USERS = 16  # users of the run whose exact top 10 the index's self-check compares with
CHECK_CANDIDATES = (100, 200, 500, 1000, 2000)  # candidate counts the self-check measures
CHECK_WARN = 0.9  # the service warns when its candidate count keeps less of the exact top 10
INDEX_KIND = "hnsw-ip-lift-v2"  # part of the fingerprint: change it when the index's layout changes


def resolve(mode: str, n_items: int, can_retrieve: bool) -> bool:
    """Whether to use the index: ``mode`` is ``auto`` (from ``AUTO_MIN_ITEMS`` items on), ``on`` or ``off``."""
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"--ann must be auto, on or off, got {mode!r}")
    if mode == "on" and not can_retrieve:
        raise ConfigError("--ann on needs a model with a dot-product stage (gmf, mlp or neumf)")
    return can_retrieve and (mode == "on" or (mode == "auto" and n_items >= AUTO_MIN_ITEMS))


class AnnIndex:
    """HNSW over dot-product rows ``[n_items, d]``; ``search`` returns item indexes."""

    def __init__(self, index, n_items: int, dim: int, meta: dict, ef_search: int):
        self.index, self.n_items, self.dim, self.meta, self.ef_search = index, n_items, dim, meta, ef_search
        self.scale = np.asarray(meta.get("scale") or np.ones(dim), dtype=np.float32)

    @staticmethod
    def scales(rows: np.ndarray, queries: np.ndarray | None) -> np.ndarray:
        """[d] s_j = sqrt(rms(query_j) / rms(row_j)) (ones without queries)."""
        if queries is None or not len(queries):
            return np.ones(rows.shape[1], np.float32)
        rq = np.sqrt(np.mean(np.square(queries, dtype=np.float64), axis=0))
        rx = np.sqrt(np.mean(np.square(rows, dtype=np.float64), axis=0))
        s = np.sqrt(np.maximum(rq, 1e-12) / np.maximum(rx, 1e-12))
        return np.where((rq > 0) & (rx > 0), s, 1.0).astype(np.float32)

    @staticmethod
    def rows_key(rows: np.ndarray, queries: np.ndarray | None = None) -> str:
        """A fingerprint of rows (and the queries that set the scale), for callers that hold them;
        the service keys its index by what the rows are computed from instead
        (``NCFRanker.retrieval_key``), so that a restart need not compute them."""
        h = hashlib.sha256(f"rows {np.shape(rows)}".encode())
        h.update(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
        if queries is not None:
            h.update(np.ascontiguousarray(queries, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    @staticmethod
    def fingerprint(key: str, m: int, ef_construction: int) -> str:
        """What ``build`` records and ``load`` must find: the rows' ``key`` and the HNSW parameters."""
        return hashlib.sha256(f"{INDEX_KIND} m={m} efc={ef_construction} {key}".encode()).hexdigest()[:16]

    @classmethod
    def build(cls, rows: np.ndarray, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
              ef_search: int = 64, queries: np.ndarray | None = None, key: str | None = None,
              threads: int | None = None) -> AnnIndex:
        """``queries``: a sample of the queries to expect ([n, d]), for the per-coordinate scale;
        ``key``: the rows' fingerprint (default ``rows_key(rows, queries)``); ``threads``: faiss
        (OpenMP) threads while adding the rows (default: faiss's, one per core); searches are
        one query at a time and use one thread whatever this is."""
        import faiss

        rows = np.ascontiguousarray(rows, dtype=np.float32)
        fp = cls.fingerprint(key if key is not None else cls.rows_key(rows, queries), m, ef_construction)
        # centred: subtracting the mean row shifts every item's score for a query by the same
        # amount (mean . x_u), so the ranking is unchanged, while the norms (and the lift, which
        # otherwise dominates the distances) shrink to the spread between items
        rows = rows - rows.mean(axis=0, keepdims=True)
        scale = cls.scales(rows, queries)
        rows = rows * scale
        norms = np.linalg.norm(rows, axis=1)
        radius = float(norms.max()) if len(norms) else 0.0
        lift = np.sqrt(np.maximum(radius ** 2 - norms ** 2, 0.0)).astype(np.float32)[:, None]
        index = faiss.IndexHNSWFlat(rows.shape[1] + 1, m)
        index.hnsw.efConstruction = ef_construction
        before = faiss.omp_get_max_threads()
        if threads is not None and threads >= 1:
            faiss.omp_set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            index.add(np.hstack([rows, lift]))
        finally:
            faiss.omp_set_num_threads(before)
        meta = {"fingerprint": fp, "n_items": int(rows.shape[0]),
                "dim": int(rows.shape[1]), "m": m, "ef_construction": ef_construction,
                "build_seconds": round(time.perf_counter() - t0, 2), "build_threads": threads or before,
                "faiss": faiss.__version__, "scale": [float(x) for x in scale]}
        return cls(index, rows.shape[0], rows.shape[1], meta, ef_search)

    def save(self, directory: Path) -> None:
        import faiss

        from ncf.checkpoint import atomic_write_json

        directory = Path(directory)
        tmp = directory / "ann.faiss.tmp"
        faiss.write_index(self.index, str(tmp))
        tmp.replace(directory / "ann.faiss")
        atomic_write_json(directory / "ann.json", self.meta)

    def save_meta(self, directory: Path) -> None:
        """Rewrite ``DIR/ann.json`` only (the index file unchanged), e.g. after a self-check."""
        from ncf.checkpoint import atomic_write_json

        atomic_write_json(Path(directory) / "ann.json", self.meta)

    @classmethod
    def load(cls, directory: Path, fingerprint: str, ef_search: int = 64) -> AnnIndex | None:
        """The index saved in ``directory`` if it was built from the same rows, else None."""
        import faiss

        directory = Path(directory)
        try:
            meta = json.loads((directory / "ann.json").read_text())
            if meta.get("fingerprint") != fingerprint:
                return None
            index = faiss.read_index(str(directory / "ann.faiss"))
        except (OSError, ValueError, RuntimeError) as e:  # missing, torn or foreign files: rebuild
            if (directory / "ann.json").exists():
                log.warning("ANN index in %s not usable (%s): rebuilding it", directory, e)
            return None
        if index.ntotal != meta["n_items"] or index.d != meta["dim"] + 1:
            return None
        return cls(index, meta["n_items"], meta["dim"], meta, ef_search)

    @classmethod
    def load_or_build(cls, directory: Path | None, key: str,
                      inputs: Callable[[], tuple[np.ndarray, np.ndarray | None]], m: int = DEFAULT_M,
                      ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int = 64,
                      threads: int | None = None) -> AnnIndex:
        """Load the index persisted in ``directory`` under ``key`` (the rows' fingerprint), or
        build it from ``inputs()`` (rows and sample queries, only computed then) and persist it."""
        if directory is not None:
            got = cls.load(directory, cls.fingerprint(key, m, ef_construction), ef_search)
            if got is not None:
                log.info("ANN index loaded from %s", directory)
                return got
        rows, queries = inputs()
        log.warning("building the ANN index (HNSW, %d items, M=%d, efConstruction=%d) ...",
                    len(rows), m, ef_construction)
        index = cls.build(rows, m, ef_construction, ef_search, queries, key=key, threads=threads)
        log.warning("ANN index built in %.1f s", index.meta["build_seconds"])
        if directory is not None:
            try:
                index.save(directory)
            except OSError as e:
                log.warning("cannot persist the ANN index in %s (%s): kept in memory only", directory, e)
        return index

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Up to ``k`` item indexes with the largest ``row . query``, ``exclude`` (bool [n_items])
        left out (the search asks for as many more as are excluded, at most the catalogue)."""
        import faiss

        extra = int(np.count_nonzero(exclude)) if exclude is not None else 0  # sum() is ~10x slower
        want = min(self.n_items, k + extra)
        q = np.ascontiguousarray(np.append(np.asarray(query, np.float32) / self.scale, np.float32(0.0))[None])
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, want)
        _, idx = self.index.search(q, want, params=params)
        idx = idx[0]
        idx = idx[idx >= 0]
        if exclude is not None:
            idx = idx[~exclude[idx]]
        return idx[:k].astype(np.int64)
