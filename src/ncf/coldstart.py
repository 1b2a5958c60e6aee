"""Cold-start users: hold a set of users out of training entirely, then recommend to them
from their side features alone and compare with popularity baselines.

Protocol (:func:`cold_split`): a ``fraction`` of the users that have a test item is drawn
(seeded); *all* their interactions leave the training data (their rows stay, empty, so the
indexes and feature tables are those of the full dataset). Each cold user is then evaluated
on their usual test item: ``sampled`` (among its 1 + 99 candidates) and ``full`` (among
every item except the user's other interactions: those are positives we hold, not
competitors, as in the warm protocol). Warm users keep the standard split.

Scorers for a cold user: :class:`SegmentPrior` (the one :class:`ncf.recommend.Recommender`
uses for a new user's features: popularity conditioned on the user's field values, shrunk
towards global popularity, its mode and shrinkage chosen on validation users by
:func:`choose_prior`), :class:`FeatureScorer` (a model with ``score_all_features``, i.e.
``widedeep``: the learned "unknown user" row plus the user's features),
:class:`ncf.models.baselines.Popularity` (training counts), :class:`SegmentPopular` (item
popularity among warm users sharing each of the user's feature values, averaged over fields,
unshrunk) and :class:`PriorBlend` (the feature model's standardised scores blended with
standardised log popularity). Choices are made on validation users' *latest* items, the kind of
item the cold test users are scored on (:func:`run`, issue 17).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ncf.data.interactions import Interactions
from ncf.data.split import Dataset, HoldOut
from ncf.errors import ConfigError, DataError
from ncf.models.baselines import Popularity


def _keep(h: HoldOut | None, mask_users: np.ndarray, keep_cold: bool) -> HoldOut | None:
    if h is None:
        return None
    sel = np.isin(h.users, mask_users) == keep_cold
    return HoldOut(h.users[sel], h.items[sel], h.candidates[sel])


def cold_split(dataset: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, HoldOut]:
    """(warm dataset without any interaction of the cold users, the cold users' test holdout)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"cold-user fraction must be in (0, 1), got {fraction}")
    candidates = np.unique(dataset.test.users)
    n_cold = int(round(fraction * len(candidates)))
    if n_cold < 1 or n_cold >= len(candidates):
        raise ConfigError(f"a fraction of {fraction} of {len(candidates)} test users leaves no cold or no warm users")
    cold = np.sort(np.random.default_rng(seed).choice(candidates, n_cold, replace=False))
    tr = dataset.train
    users, items = tr.coo()
    keep = ~np.isin(users, cold)
    train = Interactions.from_indices(
        users[keep], items[keep], tr.user_map, tr.item_map,
        None if tr.timestamps is None else tr.timestamps[keep],
        None if tr.ratings is None else tr.ratings[keep], meta=tr.meta)
    report = {**dataset.report, "cold_start": {"cold_users": int(n_cold), "fraction": fraction, "seed": seed,
                                               "interactions_removed": int((~keep).sum())}}
    warm = Dataset(dataset.name, train, _keep(dataset.test, cold, False), _keep(dataset.valid, cold, False),
                   dataset.n_interactions, report, dataset.item_info)
    return warm, _keep(dataset.test, cold, True)


class _Scorer:
    """Scorer contract over fixed tensors (no parameters: the evaluator then works on CPU)."""

    training = False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def parameters(self):
        return iter(())


class SegmentPopular(_Scorer):
    """Score = mean over the user's cat/bucket fields of the item's share of the interactions of
    warm users with the same value (values shared by no warm user contribute plain popularity)."""

    name = "segment-pop"

    def __init__(self, train: sp.csr_matrix, user_codes: list[np.ndarray]):
        self.n_users, self.n_items = train.shape
        self.codes = [torch.as_tensor(c) for c in user_codes if c.ndim == 1]
        pop = np.asarray(train.sum(axis=0)).ravel()
        pop = pop / max(pop.sum(), 1)
        self.tables = []
        for c in self.codes:
            onehot = sp.csr_matrix((np.ones(len(c)), (c.numpy(), np.arange(len(c)))), shape=(int(c.max()) + 1, len(c)))
            counts = np.asarray((onehot @ train).todense(), dtype=np.float64)  # [V, I]
            totals = counts.sum(axis=1, keepdims=True)
            share = np.where(totals > 0, counts / np.maximum(totals, 1), pop[None, :])
            self.tables.append(torch.as_tensor(share, dtype=torch.float32))

    def score_all(self, users):
        users = users.cpu()
        if not self.tables:
            raise ConfigError("segment popularity needs categorical user features")
        return sum(t[c[users]] for t, c in zip(self.tables, self.codes, strict=True)) / len(self.tables)

    def score(self, users, items):
        users, items = users.cpu(), items.cpu()
        return sum(t[c[users], items] for t, c in zip(self.tables, self.codes, strict=True)) / len(self.tables)


@dataclass(frozen=True)
class PastRows:
    """Timestamped interactions that :class:`SegmentPrior` counts for a scored user only if dated
    no later than that user's own time: what a deployed system could have counted when the user
    came (issue 17). ``users``, ``items``, ``times``: one entry per row (each counts ``weight``;
    a row of the scored user is never counted for them); ``at``: ``[n_users]`` each user's time
    (NCF layout: the time of their own latest item, :func:`latest_times`). Rows are counted
    besides ``train``'s (untimed) rows, which always count."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    at: np.ndarray
    weight: float = 1.0

    def __post_init__(self):
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ConfigError(f"weight of the past rows must be a finite number >= 0, got {w!r}")
        n = {len(np.asarray(x)) for x in (self.users, self.items, self.times)}
        if len(n) != 1:
            raise ConfigError(f"past rows: users, items and times differ in length ({sorted(n)})")

    def without(self, users: np.ndarray) -> PastRows:
        """These rows less those of ``users`` (e.g. a held-out fold)."""
        keep = ~np.isin(self.users, users)
        return PastRows(self.users[keep], self.items[keep], self.times[keep], self.at, self.weight)


class SegmentPrior(_Scorer):
    """Features-conditioned popularity with shrinkage (issue 17): the cold-start scorer.

    ``p(i)`` is the item's share of the (binary) training interactions. For one user field with
    value ``v``, ``P(i | v) = (c_v(i) + m p(i)) / (n_v + m)``: the counts of warm users with that
    value, shrunk towards ``p`` by ``m = alpha`` × the mean interactions per value of the field
    (so ``alpha`` is in "average segments" and means the same on any dataset; small segments are
    shrunk most). Fields combine

    - ``naive-bayes``: ``log p(i) + Σ_f [log P(i | v_f) - log p(i)]`` (each field's log-odds
      added, as if the fields were independent given the item), or
    - ``joint``: ``log P(i | v_1, ..., v_F)`` over the combination of all fields (one segment per
      combination seen in training; a combination no warm user has scores as ``p``).

    ``alpha = inf`` is most-popular (same ranking as :class:`ncf.models.baselines.Popularity`,
    ties included); ``alpha`` and ``mode`` are chosen on validation users by :func:`choose_prior`.
    Only cat/bucket fields take part (a multi-valued user field is left out).

    ``weights``: None (every training interaction counts 1), or a sparse ``[n_users, n_items]``
    matrix of each training interaction's weight (finite, >= 0; an interaction with no stored
    weight, or weight 0, does not count; entries outside ``train`` are ignored). Every count
    above, ``p`` included, is then a sum of weights: e.g. :func:`recency_weights` makes recent
    events count more. ``alpha = inf`` then ranks by weighted popularity.

    ``past``: :class:`PastRows`, timestamped rows counted (besides ``train``'s) for a scored user
    only where dated no later than ``past.at[user]``, the user's own rows never: every count
    above (``p``, ``c_v``, ``n_v``, the number of values holding interactions) is then the user's
    own. :meth:`score_codes` counts the rows dated up to ``at`` (default: all of them)."""

    MODES = ("naive-bayes", "joint")

    def __init__(self, train: sp.csr_matrix, user_codes: list[np.ndarray], alpha: float = 1.0,
                 mode: str = "naive-bayes", field_names: list[str] | None = None,
                 weights: sp.spmatrix | None = None, past: PastRows | None = None):
        if mode not in self.MODES:
            raise ConfigError(f"segment prior mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if not alpha >= 0:  # NaN too
            raise ConfigError(f"segment prior alpha must be >= 0 (inf: most popular), got {alpha}")
        self.n_users, self.n_items = train.shape
        self.alpha, self.mode = float(alpha), mode
        names = field_names or [f"field{k}" for k in range(len(user_codes))]
        keep = [k for k, c in enumerate(user_codes) if np.ndim(c) == 1]
        self.field_names = [names[k] for k in keep]
        self.codes = [np.asarray(user_codes[k], dtype=np.int64) for k in keep]
        for name, c in zip(self.field_names, self.codes, strict=True):
            if len(c) != self.n_users:
                raise ConfigError(f"user feature {name!r}: {len(c)} codes for {self.n_users} users")
        self.sizes = [int(c.max(initial=0)) + 1 for c in self.codes]
        self.name = "segment-prior" if np.isfinite(self.alpha) else "segment-prior (alpha=inf)"
        m = sp.csr_matrix(train, dtype=np.float64, copy=True)
        m.sum_duplicates()
        m.eliminate_zeros()  # (rows zeroed out by a fold mask)
        m.data[:] = 1.0
        if weights is not None:
            m = self._weighted(m, weights)
        counts = np.asarray(m.sum(axis=0)).ravel()
        total = counts.sum()
        self.log_p = np.log((counts + 0.5) / (total + 0.5 * self.n_items))  # ranks as the counts do
        self.tables: list[np.ndarray] = []  # naive-bayes: [V_f, I] log-odds; joint: one [S, I] table
        self._segments: dict[int, int] = {}  # joint: mixed-radix combination -> table row
        self._past = None
        if past is not None:
            if not isinstance(past, PastRows):
                raise ConfigError(f"segment prior past rows must be PastRows, got {type(past).__name__}")
            self._past = self._past_state(m, past)
            return
        if not np.isfinite(self.alpha) or not self.codes:
            return
        p = np.exp(self.log_p)
        if mode == "naive-bayes":
            for c, size in zip(self.codes, self.sizes, strict=True):
                self.tables.append(self._shrunk(m, c, size, total, p) - self.log_p[None, :])
        else:
            combo = self._combination(self.codes)
            uniq, seg = np.unique(combo, return_inverse=True)
            self._segments = {int(u): n for n, u in enumerate(uniq)}
            self.tables.append(self._shrunk(m, seg, len(uniq), total, p))

    @staticmethod
    def _weighted(m: sp.csr_matrix, weights: sp.spmatrix) -> sp.csr_matrix:
        """The binary training matrix ``m`` with each interaction's weight in place of its 1."""
        if not sp.issparse(weights):
            raise ConfigError(f"segment prior weights must be a scipy sparse matrix, got {type(weights).__name__}")
        if weights.shape != m.shape:
            raise ConfigError(f"segment prior weights have shape {weights.shape}, the training matrix {m.shape}")
        w = sp.csr_matrix(weights, dtype=np.float64)
        bad = ~(np.isfinite(w.data) & (w.data >= 0))
        if bad.any():
            r = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
            k = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"segment prior weights must be finite and >= 0: {int(bad.sum())} are not, e.g. "
                              f"{w.data[k]} (user index {int(r[k])}, item index {int(w.indices[k])})")
        return sp.csr_matrix(m.multiply(w))

    def _values(self) -> list[np.ndarray]:
        """Each table's value per user: the field's codes (naive-bayes), or the segment (joint)."""
        if self.mode == "naive-bayes":
            return list(self.codes)
        uniq, seg = np.unique(self._combination(self.codes), return_inverse=True)
        self._segments = {int(u): n for n, u in enumerate(uniq)}
        return [seg.reshape(-1)]

    def _past_state(self, m: sp.csr_matrix, past: PastRows) -> dict[str, Any]:
        """The untimed counts per table value and the past rows sorted by time, for :meth:`_past_scores`."""
        at = np.asarray(past.at, dtype=np.float64).reshape(-1)
        if len(at) != self.n_users:
            raise ConfigError(f"past rows: {len(at)} user times for {self.n_users} users")
        users, items = np.asarray(past.users, dtype=np.int64), np.asarray(past.items, dtype=np.int64)
        times = np.asarray(past.times, dtype=np.float64)
        for what, x, n in (("user", users, self.n_users), ("item", items, self.n_items)):
            if len(x) and (x.min() < 0 or x.max() >= n):
                raise ConfigError(f"past rows: {what} index {int(x.min() if x.min() < 0 else x.max())} "
                                  f"outside 0..{n - 1}")
        if np.isnan(times).any() or np.isnan(at).any():
            raise ConfigError("past rows: a time is NaN")
        order = np.argsort(times, kind="stable")
        users, times = users[order], times[order]
        rows = sp.csr_matrix((np.full(len(order), float(past.weight)), (np.arange(len(order)), items[order])),
                             shape=(len(order), self.n_items))
        tables = []
        if np.isfinite(self.alpha) and self.codes:
            for vals in self._values():
                size = int(vals.max(initial=-1)) + 1
                onehot = sp.csr_matrix((np.ones(len(vals)), (vals, np.arange(len(vals)))), shape=(size, len(vals)))
                base = np.asarray((onehot @ m).todense())  # [size, I]
                first = np.full(size, np.inf)  # when a value without untimed rows gets its first past row
                np.minimum.at(first, vals[users], times)
                first[base.sum(axis=1) > 0] = -np.inf
                tables.append((vals, base, np.sort(first)))
        return {"at": at, "users": users, "times": times, "rows": rows,
                "base": np.asarray(m.sum(axis=0)).ravel(), "tables": tables}

    def _past_scores(self, values: list[np.ndarray], cut: np.ndarray, own: np.ndarray | None) -> np.ndarray:
        """[B, I] scores counting the past rows dated <= ``cut[b]`` (not those of user ``own[b]``);
        ``values``: per table, each scored user's value (-1: none in the vocabulary)."""
        st = self._past
        b, n = len(cut), len(st["times"])
        k = np.searchsorted(st["times"], cut, side="right")  # rows [0, k_b) are counted for user b
        rows = np.repeat(np.arange(b), k)
        cols = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
        if own is not None:
            keep = st["users"][cols] != own[rows]
            rows, cols = rows[keep], cols[keep]

        def extra(sel: np.ndarray | None = None) -> np.ndarray:
            r, c = (rows, cols) if sel is None else (rows[sel], cols[sel])
            return (sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(b, n)) @ st["rows"]).toarray()

        counts = st["base"][None, :] + extra()
        total = counts.sum(axis=1, keepdims=True)
        log_p = np.log((counts + 0.5) / (total + 0.5 * self.n_items))
        if not st["tables"]:
            return log_p
        p, out = np.exp(log_p), log_p.copy()
        for (vals, base, first), v in zip(st["tables"], values, strict=True):
            c = np.zeros((b, self.n_items))
            inside = (v >= 0) & (v < len(base))
            c[inside] = base[v[inside]]
            c += extra(vals[st["users"][cols]] == np.where(inside, v, -1)[rows])
            nv = c.sum(axis=1, keepdims=True)
            filled = np.maximum(np.searchsorted(first, cut, side="right"), 1)[:, None]
            pseudo = self.alpha * total / filled
            with np.errstate(divide="ignore", invalid="ignore"):
                shrunk = np.where(nv > 0, np.log((c + pseudo * p) / (nv + pseudo)), log_p)
            if self.mode == "joint":
                return shrunk
            out += shrunk - log_p
        return out

    def _shrunk(self, m: sp.csr_matrix, code: np.ndarray, size: int, total: float, p: np.ndarray) -> np.ndarray:
        """[size, I] log((c_v(i) + m p(i)) / (n_v + m)) over the warm users' interactions."""
        onehot = sp.csr_matrix((np.ones(len(code)), (code, np.arange(len(code)))), shape=(size, len(code)))
        c = np.asarray((onehot @ m).todense())  # [size, I]
        n = c.sum(axis=1, keepdims=True)
        pseudo = self.alpha * total / max(int((n > 0).sum()), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.log((c + pseudo * p[None, :]) / (n + pseudo))
        return np.where(n > 0, out, self.log_p[None, :])  # a value no warm user has: popularity

    def _combination(self, codes: list[np.ndarray]) -> np.ndarray:
        combo = np.zeros(len(codes[0]), dtype=np.int64)
        for c, size in zip(codes, self.sizes, strict=True):
            combo = combo * size + np.minimum(c, size - 1)
        return combo

    def score_codes(self, codes: list[np.ndarray], at: np.ndarray | None = None) -> np.ndarray:
        """[B, n_items] float64 scores of users given by their codes (one ``[B]`` array per field
        of :attr:`field_names`, as :func:`ncf.data.features.encode_features` makes them); ``at``:
        with ``past`` rows, the users' times (default: every past row counts)."""
        codes = [np.asarray(c, dtype=np.int64).reshape(-1) for c in codes]
        b = len(codes[0]) if codes else 1
        if self._past is not None:
            return self._scores_at(codes, np.full(b, np.inf) if at is None else np.asarray(at, np.float64), None)
        out = np.repeat(self.log_p[None, :], b, axis=0)
        if not self.tables:
            return out
        if len(codes) != len(self.codes):
            raise ConfigError(f"segment prior: {len(codes)} feature arrays for {len(self.codes)} fields")
        if self.mode == "joint":
            rows = np.array([self._segments.get(int(x), -1) for x in self._combination(codes)])
            known = rows >= 0
            out[known] = self.tables[0][rows[known]]
            return out
        for table, c in zip(self.tables, codes, strict=True):
            inside = c < len(table)  # a value beyond the training vocabulary: no evidence
            out[inside] += table[c[inside]]
        return out

    def _scores_at(self, codes: list[np.ndarray], cut: np.ndarray, own: np.ndarray | None) -> np.ndarray:
        if self._past["tables"] and len(codes) != len(self.codes):
            raise ConfigError(f"segment prior: {len(codes)} feature arrays for {len(self.codes)} fields")
        if not self._past["tables"]:
            values = []
        elif self.mode == "joint":
            values = [np.array([self._segments.get(int(x), -1) for x in self._combination(codes)], dtype=np.int64)]
        else:
            values = codes
        return self._past_scores(values, cut.reshape(-1), own)

    def score_all(self, users):
        u = users.cpu().numpy()
        if self._past is not None:
            scores = self._scores_at([c[u] for c in self.codes], self._past["at"][u], u)
            return torch.as_tensor(scores, dtype=torch.float32)
        if not self.codes:  # no user fields: (weighted) popularity for everyone
            return torch.as_tensor(self.log_p, dtype=torch.float32).expand(len(u), -1).clone()
        return torch.as_tensor(self.score_codes([c[u] for c in self.codes]), dtype=torch.float32)

    def score(self, users, items):
        uniq, inv = torch.unique(users.cpu(), return_inverse=True)
        return self.score_all(uniq)[inv, items.cpu()]

    def settings(self) -> dict[str, Any]:
        return {"mode": self.mode, "alpha": self.alpha if np.isfinite(self.alpha) else "inf",
                "fields": list(self.field_names)}


def recency_weights(interactions: Interactions, half_life: float | None,
                    now: float | None = None) -> sp.csr_matrix | None:
    """Each interaction's weight ``exp(-(now - t) ln 2 / half_life)`` (1 at ``now``, 1/2 one
    half-life earlier) as a sparse matrix for :class:`SegmentPrior`'s ``weights``; ``now``
    defaults to the latest timestamp; ``half_life`` and ``now`` are in the timestamps' units
    (seconds for MovieLens). ``half_life=None``: None (unweighted)."""
    if half_life is None:
        return None
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not 0 < half_life < float("inf"):
        raise ConfigError(f"recency half-life must be a positive finite number (timestamp units) or None, "
                          f"got {half_life!r}")
    if interactions.timestamps is None:
        raise DataError("recency weights need timestamps, and these interactions have none")
    t = interactions.timestamps.astype(np.float64)
    now = float(t.max(initial=0)) if now is None else float(now)
    m = interactions.matrix
    return sp.csr_matrix((np.exp(-np.maximum(now - t, 0) * np.log(2) / half_life), m.indices.copy(),
                          m.indptr.copy()), shape=m.shape)


def latest_weighted(train: sp.csr_matrix, latest: HoldOut, weight: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """For data whose training rows have no timestamps but whose users' latest items are known
    (the NCF layout: ``latest`` is the test holdout): (the binary matrix of ``train`` plus the
    ``latest`` rows, weights for :class:`SegmentPrior`: 1 for a training row, ``weight`` for a
    latest row). ``weight`` 0 counts the training rows only; 1 all rows alike."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise ConfigError(f"weight of the latest rows must be a finite number >= 0, got {weight!r}")
    base = sp.csr_matrix(train, dtype=np.float64, copy=True)
    base.data[:] = 1.0
    last = sp.csr_matrix((np.ones(len(latest)), (latest.users, latest.items)), shape=train.shape)
    last.data[:] = 1.0  # (a user's repeated latest item counts once)
    if base.multiply(last).nnz:
        raise DataError("a latest row is also a training row")
    corpus = (base + last).tocsr()
    return corpus, (base + weight * last).tocsr() if weight else base


def _pooled_ranks(make, holdout: HoldOut, protocol: str, seen: sp.csr_matrix | None,
                  groups: list[np.ndarray]) -> np.ndarray:
    """Ranks of ``holdout`` under ``protocol``, its rows ``groups[k]`` scored by ``make(k)``."""
    from ncf.eval.evaluator import full_ranks, sampled_ranks

    ranks = np.empty(len(holdout), dtype=np.int64)
    for k, rows in enumerate(groups):
        if not len(rows):
            continue
        h = HoldOut(holdout.users[rows], holdout.items[rows], holdout.candidates[rows])
        ranks[rows] = sampled_ranks(make(k), h) if protocol == "sampled" else full_ranks(make(k), h, seen)
    return ranks


def choose_prior(train: sp.csr_matrix, user_codes: list[np.ndarray], valid: HoldOut, seen: sp.csr_matrix | None,
                 protocol: str = "full", alphas=(0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, float("inf")),
                 modes=SegmentPrior.MODES, folds: int | None = 10, seed: int = 0, metric: str = "ndcg@10",
                 field_names: list[str] | None = None, weights: sp.spmatrix | None = None,
                 past: PastRows | None = None) -> dict[str, Any]:
    """The ``(mode, alpha)`` of :class:`SegmentPrior` with the best ``metric`` on validation users'
    held-out items ``valid`` under ``protocol``; ties to the larger alpha (closer to popularity).
    ``weights``, ``past``: as :class:`SegmentPrior`'s, the same for every fit (a held-out fold's
    past rows left out with its training rows).

    ``folds=None``: ``valid``'s users are already absent from ``train`` (a separate set of cold
    validation users). ``folds=K``: ``valid``'s users are warm users, split into K seeded folds;
    each fold is scored by a prior fitted without that fold's users (K-fold cross-validation over
    users: every validation user is cold when scored, and all of them count).
    Returns ``{"mode", "alpha", "protocol", "metric", "curve": {mode: [score per alpha]}}``."""
    from ncf.eval.metrics import summarize

    if not len(valid):
        raise ConfigError("choosing a segment prior needs validation users with a held-out item")
    if protocol == "full" and seen is None:
        raise ConfigError("the full protocol needs the users' seen items")
    train = sp.csr_matrix(train)
    if folds is None:
        groups = [np.arange(len(valid))]
        fitted = [train]
    else:
        users = np.unique(valid.users)
        if folds < 2 or folds > len(users):
            raise ConfigError(f"folds must be in [2, {len(users)}] (validation users), got {folds}")
        fold_of = np.full(train.shape[0], -1)
        fold_of[users] = np.random.default_rng(seed).permutation(len(users)) % folds
        groups = [np.flatnonzero(fold_of[valid.users] == k) for k in range(folds)]
        fitted = [sp.diags((fold_of != k).astype(np.float64)) @ train for k in range(folds)]
    pasts = [None if past is None else past if folds is None else past.without(np.flatnonzero(fold_of == k))
             for k in range(len(fitted))]
    curve: dict[str, list[float]] = {}
    for mode in modes:
        curve[mode] = []
        for a in alphas:
            def make(k, a=a, mode=mode):
                return SegmentPrior(fitted[k], user_codes, a, mode, field_names, weights, pasts[k])

            ranks = _pooled_ranks(make, valid, protocol, seen, groups)
            curve[mode].append(float(summarize(ranks, (10,), full=protocol == "full")[metric]))
    best = max(((v, a, mode) for mode in modes for a, v in zip(alphas, curve[mode], strict=True)),
               key=lambda t: (t[0], t[1]))
    return {"mode": best[2], "alpha": best[1], "protocol": protocol, "metric": metric, "value": best[0],
            "alphas": [a if np.isfinite(a) else "inf" for a in alphas], "curve": curve,
            "chosen_on": "separate cold validation users" if folds is None else f"{folds}-fold CV over users"}


def _weighting(w: sp.spmatrix | PastRows | None) -> dict[str, Any]:
    """SegmentPrior's keyword for a weighting of :func:`weightings`."""
    return {"past": w} if isinstance(w, PastRows) else {"weights": w}


def choose_weighting(train: sp.csr_matrix, weightings: dict[str, sp.spmatrix | PastRows | None], valid: HoldOut,
                     seen: sp.csr_matrix | None, protocol: str = "full", folds: int | None = 10, seed: int = 0,
                     metric: str = "ndcg@10", user_codes: list[np.ndarray] | None = None,
                     field_names: list[str] | None = None, **grid) -> dict[str, Any]:
    """The label of ``weightings`` (``{label: weights or PastRows for SegmentPrior}``, None = unweighted)
    with the best ``metric`` on ``valid`` under ``protocol``, users held out as
    :func:`choose_prior` does (``folds``); ties to the earlier label. Without ``user_codes``, each
    weighting is scored as its weighted most-popular (``alpha = inf``, no features); with them,
    by :func:`choose_prior`'s best ``(mode, alpha)`` (``grid``: its ``alphas`` / ``modes``), so
    the weighting, mode and alpha are chosen jointly. Returns :func:`choose_prior`'s dict for the
    best weighting plus ``"weighting"`` and ``"by_weighting"`` (``{label: best value}``)."""
    if not weightings:
        raise ConfigError("choosing a weighting needs at least one")
    if not user_codes:
        user_codes, grid = [], {"alphas": (float("inf"),), "modes": (SegmentPrior.MODES[0],)}
    got = {label: choose_prior(train, user_codes, valid, seen, protocol, folds=folds, seed=seed, metric=metric,
                               field_names=field_names, **_weighting(w), **grid)
           for label, w in weightings.items()}
    best = max(got, key=lambda label: (got[label]["value"], -list(got).index(label)))
    return {**got[best], "weighting": best, "by_weighting": {label: g["value"] for label, g in got.items()}}


class FeatureScorer(_Scorer):
    """A trained model's cold-start scores: users known by their features only (their own
    id embedding is never read)."""

    def __init__(self, model):
        if not hasattr(model, "score_all_features"):
            raise ConfigError(f"model {model.name!r} cannot score users from features (train widedeep)")
        self.model = model
        self.name = f"{model.name} (features)"
        self.n_users, self.n_items = model.n_users, model.n_items

    def parameters(self):
        return self.model.parameters()

    def score(self, users, items):
        return self.model.score_features(self.model.user_features(users), items)

    def score_all(self, users):
        return self.model.score_all_features(self.model.user_features(users), len(users))


def _z(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.float()
    std = scores.std(dim=1, keepdim=True, unbiased=False)
    return (scores - scores.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))


class PriorBlend(_Scorer):
    """``(1 - beta) · z(features scores) + beta · z(log(1 + training count))``, each row
    standardised over the catalogue: a feature model with the popularity head added back.
    ``beta`` 0 is the feature model, 1 ranks as most-popular."""

    def __init__(self, base, prior: Popularity, beta: float):
        if not 0 <= beta <= 1:
            raise ConfigError(f"beta must be in [0, 1], got {beta}")
        self.base, self.beta = base, float(beta)
        self.prior = torch.log1p(prior.counts.detach())[None, :]
        self.name = f"{base.name} + pop prior"
        self.n_users, self.n_items = base.n_users, base.n_items

    def parameters(self):
        return self.base.parameters()

    def score_all(self, users):
        s = _z(self.base.score_all(users)).cpu()
        return (1 - self.beta) * s + self.beta * _z(self.prior).expand(len(users), -1)

    def score(self, users, items):
        uniq, inv = torch.unique(users.cpu(), return_inverse=True)
        return self.score_all(uniq)[inv, items.cpu()]


def choose_beta(base, prior: Popularity, valid: HoldOut, seen: sp.csr_matrix, protocol: str,
                grid: np.ndarray | None = None, metric: str = "ndcg@10") -> tuple[float, list[float]]:
    """The ``beta`` of :class:`PriorBlend` with the best ``metric`` on ``valid`` (the cold users'
    validation items: never trained on, and not their test items) under ``protocol``; ties to
    the smaller beta. Returns (beta, score of every grid value)."""
    from ncf.eval.evaluator import evaluate

    grid = np.linspace(0, 1, 21) if grid is None else grid
    scores = [evaluate(PriorBlend(base, prior, b), valid, protocol, seen=seen)[metric] for b in grid]
    return float(grid[int(np.argmax(scores))]), scores


def evaluate_cold(scorers: list, cold: HoldOut, seen: sp.csr_matrix) -> dict[str, dict[str, Any]]:
    """``{scorer name: {"sampled": metrics, "full": metrics}}`` on the cold users' holdout."""
    from ncf.eval.evaluator import evaluate

    return {s.name: {"sampled": evaluate(s, cold, "sampled"), "full": evaluate(s, cold, "full", seen=seen)}
            for s in scorers}


def user_codes(dataset, user_features: str | Path | None = None) -> tuple[list[str], list[np.ndarray]]:
    """(field names, ``[n_users]`` codes) of the dataset's cat/bucket user fields (the MovieLens
    side files beside its ratings, or a ``user_features`` CSV file); empty lists if it has none."""
    from ncf.data.features import side_features

    table = side_features(dataset, user_features, None).users
    keep = [k for k, v in enumerate(table.values) if v.ndim == 1]
    return [table.fields[k].name for k in keep], [table.values[k] for k in keep]


def _prior_rows(train: sp.csr_matrix, names, codes, cold: HoldOut, seen, choose) -> tuple[dict, dict]:
    """The segment prior chosen per protocol by ``choose(protocol)``, fitted on ``train`` and
    evaluated on ``cold``: ({"sampled": metrics, "full": metrics}, {protocol: choice})."""
    from ncf.eval.evaluator import evaluate

    metrics, choices = {}, {}
    for protocol in ("sampled", "full"):
        c = choose(protocol)
        prior = SegmentPrior(train, codes, c["alpha"], c["mode"], names)
        metrics[protocol] = evaluate(prior, cold, protocol, seen=seen)
        choices[protocol] = {**c, "alpha": c["alpha"] if np.isfinite(c["alpha"]) else "inf"}
    return metrics, choices


LATEST_WEIGHTS = (0.0, 1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
HALF_LIVES_DAYS = (1.0, 3.0, 7.0, 30.0, 90.0, 365.0)


def latest_times(data_cfg) -> np.ndarray:
    """``[n_users]`` the time of each user's latest (test) row in an NCF-layout source (its
    ``.test.rating`` file's timestamps; -inf for a user without one)."""
    from ncf.data import readers
    from ncf.data.datasets import DataConfig, ncf_prefix, read_source

    cfg = DataConfig(source=data_cfg) if isinstance(data_cfg, str) else data_cfg
    name, ratings, folder = read_source(cfg)
    if ratings is not None:
        raise ConfigError(f"{name}: the latest rows' times come from an NCF-layout source's .test.rating file")
    path = folder / f"{ncf_prefix(name, folder)}.test.rating"
    te = readers.read_ncf_rating(path)
    if te.timestamps is None:
        raise DataError(f"{path}: no timestamps (4th column): rows cannot be counted past-only")
    users = te.users.astype(np.int64)
    at = np.full(int(users.max(initial=-1)) + 1, -np.inf)
    at[users] = te.timestamps
    return at


def weightings(data: Dataset, latest: tuple = LATEST_WEIGHTS, half_lives_days: tuple = HALF_LIVES_DAYS,
               at: np.ndarray | None = None) -> tuple[sp.csr_matrix, dict, str]:
    """(counted matrix, ``{label: SegmentPrior weights or PastRows}``, how) of the recency
    options for ``data``'s users. Training rows with timestamps: the training matrix, unweighted
    or :func:`recency_weights` at each half-life. Without timestamps (the NCF layout): the training
    rows plus the users' latest (test) rows, the latter weighing ``w`` each (:func:`latest_weighted`;
    ``w = 0`` is the training rows alone); with ``at`` (:func:`latest_times`, ``[n_users]``), the
    latest rows are :class:`PastRows` dated ``at[user]``: a scored user counts only those dated no
    later than their own."""
    if data.train.timestamps is not None:
        ws = {"unweighted": None, **{f"half-life {h:g} d": recency_weights(data.train, h * 86400.0)
                                     for h in half_lives_days}}
        return data.train.matrix, ws, "training rows, weighted exp(-age ln2 / half-life) (age: to the latest one)"
    if data.test is None:
        raise ConfigError(f"{data.name}: recency weighting needs timestamps or the users' latest (test) items")
    if at is not None:
        n = data.train.matrix.shape[0]
        at = np.concatenate([np.asarray(at, dtype=np.float64), np.full(max(n - len(at), 0), -np.inf)])[:n]
        t = at[data.test.users]
        return data.train.matrix, {f"latest x{w:g}": PastRows(data.test.users, data.test.items, t, at, w) if w
                                   else None for w in latest}, \
            "training rows (untimed) weigh 1, each warm user's latest (test) row weighs w, counted for a user " \
            "only if dated no later than the user's own latest row"
    corpus = latest_weighted(data.train.matrix, data.test, 0.0)[0]
    return corpus, {f"latest x{w:g}": latest_weighted(data.train.matrix, data.test, w)[1] for w in latest}, \
        "training rows (untimed) weigh 1, each warm user's latest (test) row weighs w"


def _recency_rows(warm: Dataset, narrow: Dataset, cold_valid: HoldOut, cold: HoldOut, seen, names, codes,
                  folds: int, seed: int, joint: bool, at: np.ndarray | None = None) -> tuple[dict, dict]:
    """Rows ``recent-pop`` and ``segment-prior + recency``, each chosen by ``folds``-fold CV over
    the warm users and on the cold validation users. The prior's weighting is the one chosen for
    ``recent-pop`` (then its mode and alpha at that weighting), or with ``joint`` chosen together
    with mode and alpha. Counts: warm users only (``narrow`` for the cold validation users);
    ``at``: past-only (:func:`weightings`)."""
    from ncf.eval.evaluator import evaluate

    fit, fit_w, how = weightings(warm, at=at)
    rows, choices = {}, {}
    setups = {f"{folds}-fold CV": (fit, fit_w, warm.test, folds),
              "cold valid users": (*weightings(narrow, at=at)[:2], cold_valid, None)}
    for where, (corpus, ws, valid, k) in setups.items():
        pop_name, prior_name = f"recent-pop ({where})", f"segment-prior + recency ({where})"
        for name in (pop_name, prior_name):
            rows[name], choices[name] = {}, {}
        for protocol in ("sampled", "full"):
            c = choose_weighting(corpus, ws, valid, seen, protocol, folds=k, seed=seed)
            scorer = SegmentPrior(fit, [], float("inf"), **_weighting(fit_w[c["weighting"]]))
            rows[pop_name][protocol] = evaluate(scorer, cold, protocol, seen=seen)
            choices[pop_name][protocol] = {"weighting": c["weighting"], "by_weighting": c["by_weighting"],
                                           "chosen_on": c["chosen_on"], "how": how}
            if not codes:
                continue
            if joint:
                p = choose_weighting(corpus, ws, valid, seen, protocol, folds=k, seed=seed, user_codes=codes,
                                     field_names=names)
            else:
                p = {**choose_prior(corpus, codes, valid, seen, protocol, folds=k, seed=seed, field_names=names,
                                    **_weighting(ws[c["weighting"]])), "weighting": c["weighting"]}
            prior = SegmentPrior(fit, codes, p["alpha"], p["mode"], names, **_weighting(fit_w[p["weighting"]]))
            rows[prior_name][protocol] = evaluate(prior, cold, protocol, seen=seen)
            choices[prior_name][protocol] = {**p, "alpha": p["alpha"] if np.isfinite(p["alpha"]) else "inf",
                                             "joint": joint, "how": how}
        if not codes:
            del rows[prior_name], choices[prior_name]
    return rows, choices


def run(data_cfg, train_cfg, out: Path, fraction: float = 0.1, seed: int = 0, progress: bool = True,
        overwrite: bool = False, model_run: Path | None = None, folds: int = 10, recency: bool = False,
        recency_joint: bool = False, past_only: bool = True) -> dict:

    """The cold-start benchmark (issue 7, 17); writes ``coldstart.json`` and ``coldstart.png`` in ``out``.

    Users: ``fraction`` of the users with a test item are the cold *test* users (drawn by ``seed``,
    as :func:`cold_split`); as many again, drawn from the rest with ``seed + 1``, are cold
    *validation* users; the others are warm. Every choice is made on validation users' latest
    (test) items, the same kind of item as the cold test users': the segment prior's ``(mode,
    alpha)`` by ``folds``-fold cross-validation over the warm users, and again on the separate
    cold validation users; the widedeep blend's ``beta`` on the cold validation users.

    Count-based scorers (pop, segment-pop, segment prior) are fitted on all warm users. With
    ``train_cfg`` (widedeep), the model is trained into ``out`` on the warm users only (neither
    cold set), or ``model_run`` is such a run already trained; its rows compare with a
    most-popular fitted on the same users (``pop (train of widedeep)``).

    ``recency``: also the rows of :func:`_recency_rows` (counts that favour recent events,
    :func:`weightings`; the cold test users' rows never counted), ``recency_joint`` as there.
    ``past_only`` (NCF layout; default): a scored user (cold test, cold validation, held-out
    fold) counts only the latest rows dated no later than their own latest row
    (:func:`latest_times`); False counts every latest row, including later ones a deployed
    system could not have counted."""
    from ncf.data.datasets import load_dataset

    out = Path(out)
    full = load_dataset(data_cfg)
    warm, cold = cold_split(full, fraction, seed)
    n_cold = len(np.unique(cold.users))
    narrow, cold_valid = cold_split(warm, n_cold / len(np.unique(warm.test.users)), seed + 1)
    seen = full.seen(include_valid=True)  # a user's other interactions are no competitors
    params = (train_cfg.params or {}) if train_cfg is not None else {}
    names, codes = user_codes(full, params.get("user_features"))
    pop = Popularity.from_matrix(warm.train.matrix)
    scorers: list = [pop]
    if codes:
        scorers.append(SegmentPopular(warm.train.matrix, codes))
    result: dict[str, Any] = {
        "dataset": full.name, "cold_users": int(n_cold), "cold_valid_users": int(len(np.unique(cold_valid.users))),
        "warm_users": int(len(np.unique(warm.test.users))), "fraction": fraction, "seed": seed,
        "user_fields": names, "cold": evaluate_cold(scorers, cold, seen), "choices": {},
    }
    if codes:
        cv, valid_users = f"segment-prior ({folds}-fold CV)", "segment-prior (cold valid users)"
        result["cold"][cv], result["choices"][cv] = _prior_rows(
            warm.train.matrix, names, codes, cold, seen,
            lambda p: choose_prior(warm.train.matrix, codes, warm.test, seen, p, folds=folds, seed=seed,
                                   field_names=names))
        result["cold"][valid_users], result["choices"][valid_users] = _prior_rows(
            warm.train.matrix, names, codes, cold, seen,
            lambda p: choose_prior(narrow.train.matrix, codes, cold_valid, seen, p, folds=None, field_names=names))
    if recency:
        at = latest_times(data_cfg) if past_only and warm.train.timestamps is None else None
        rows, choices = _recency_rows(warm, narrow, cold_valid, cold, seen, names, codes, folds, seed, recency_joint,
                                      at)
        result["recency_past_only"] = at is not None
        result["cold"].update(rows)
        result["choices"].update(choices)
    if train_cfg is not None or model_run is not None:
        result.update(_model_rows(data_cfg, train_cfg, out, model_run, narrow, cold, cold_valid, seen, progress,
                                  overwrite, result))  # (trains into out first: files are written after)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_users.json").write_text(json.dumps(full.train.user_map.raws(np.unique(cold.users))))
    if codes:  # the full-protocol choice (CV), for Recommender.from_run(out) where out is the widedeep run
        chosen = result["choices"][f"segment-prior ({folds}-fold CV)"]["full"]
        (out / "cold_prior.json").write_text(json.dumps({"mode": chosen["mode"], "alpha": chosen["alpha"]}) + "\n")
    (out / "coldstart.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "coldstart.png")
    return result


def _model_rows(data_cfg, train_cfg, out, model_run, narrow: Dataset, cold, cold_valid, seen, progress, overwrite,
                result) -> dict:
    """The feature model's rows: trained on ``narrow`` (warm users only), blended with popularity
    at the ``beta`` chosen per protocol on the cold validation users."""
    from ncf.checkpoint import load_model, load_train_matrix
    from ncf.eval.evaluator import evaluate
    from ncf.train.run import train

    if model_run is not None:
        model_run = Path(model_run)
        summary = json.loads((model_run / "summary.json").read_text())
        if (load_train_matrix(model_run) != narrow.train.matrix).nnz:
            raise ConfigError(f"{model_run}: not trained on this benchmark's warm users (same dataset, "
                              "fraction and seed)")
        model = load_model(model_run)
    else:
        summary = train(data_cfg, train_cfg, out, dataset=narrow, progress=progress, overwrite=overwrite)
        model = load_model(out)
    pop = Popularity.from_matrix(narrow.train.matrix)
    pop.name = "pop (train of widedeep)"
    feat = FeatureScorer(model)
    rows = evaluate_cold([pop, feat], cold, seen)
    blend, betas = {}, {}
    for protocol in ("sampled", "full"):
        beta, curve = choose_beta(feat, pop, cold_valid, seen, protocol)
        blend[protocol] = evaluate(PriorBlend(feat, pop, beta), cold, protocol, seen=seen)
        betas[protocol] = {"beta": beta, "valid_curve": [round(x, 5) for x in curve]}
    rows[f"{feat.name} + pop prior"] = blend
    result["cold"].update(rows)
    result["choices"]["prior_blend"] = {"chosen_on": "cold validation users' latest items", **betas}
    seen_warm = narrow.seen(include_valid=True)
    return {"model": model.name, "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
            "train_seconds": summary["train_seconds"], "model_run": str(model_run or out),
            "warm": {model.name: {"sampled": summary["test"], "full": summary["test_full"]},
                     "pop": {"sampled": evaluate(pop, narrow.test, "sampled"),
                             "full": evaluate(pop, narrow.test, "full", seen=seen_warm)}}}


def plot(result: dict, path: Path) -> None:
    """Bars of HR@10 / NDCG@10 for warm and cold users, sampled and full protocols."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_bars = len(result.get("warm", {})) + len(result["cold"])
    fig, axes = plt.subplots(1, 2, figsize=(max(11, 1.3 * n_bars), 3.8))
    for ax, protocol in zip(axes, ("sampled", "full"), strict=True):
        labels, hr, nd = [], [], []
        for group in ("warm", "cold"):
            for name, m in result.get(group, {}).items():
                labels.append(f"{group}\n{name}")
                hr.append(m[protocol]["hr@10"])
                nd.append(m[protocol]["ndcg@10"])
        x = np.arange(len(labels))
        ax.bar(x - 0.2, hr, 0.4, label="HR@10")
        ax.bar(x + 0.2, nd, 0.4, label="NDCG@10")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(f"{protocol} protocol")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{result.get('model', 'count-based scorers')} on {result['dataset']}: "
                 f"{result['cold_users']} cold test users")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
