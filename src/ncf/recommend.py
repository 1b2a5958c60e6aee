"""The one recommend path: top-k, seen filter, candidate subsets, re-ranking and the popularity
fallback, with raw ids in and out (no HTTP here).

Every client goes through :class:`Recommender`: the Python API (``ncf.fit(...).recommend``),
``ncf recommend``, ``ncf rerank`` and the HTTP service (which scores from user vectors kept in
a feature store, then hands the scores to :meth:`Recommender.slate`). :func:`top_k` is the only
top-k in the library: best first, ties broken by the lower item index, everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ncf.checkpoint import CheckpointError, load_item_info, load_model, load_run_maps, load_train_matrix, read_json
from ncf.data.interactions import IdMap
from ncf.errors import ConfigError, UnknownIdError
from ncf.models.base import Model


class UnknownItemError(UnknownIdError):
    """A raw item id that is not in the model's catalogue."""


class RerankUnavailable(ConfigError):
    """Re-ranking was asked for, but the run has no (valid) ``rerank.json``."""


def load_cold_prior(directory: Path) -> dict | None:
    """``cold_prior.json`` of a run directory (the segment prior's ``mode`` / ``alpha`` chosen on
    validation users, e.g. by ``benchmarks/coldstart.py``), or None."""
    from ncf.coldstart import SegmentPrior

    path = Path(directory) / "cold_prior.json"
    if not path.exists():
        return None
    got = read_json(path)
    if not isinstance(got, dict) or set(got) - {"mode", "alpha"}:
        raise CheckpointError(f"{path}: expected {{\"mode\": ..., \"alpha\": ...}}, got {got!r}")
    if isinstance(got.get("alpha"), str):
        try:
            got["alpha"] = float(got["alpha"])
        except ValueError:
            raise CheckpointError(f"{path}: alpha must be a number or \"inf\", got {got['alpha']!r}") from None
    alpha = got.get("alpha", 1.0)
    if not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise CheckpointError(f"{path}: alpha must be >= 0 (or \"inf\"), got {alpha!r}")
    if got.get("mode", SegmentPrior.MODES[0]) not in SegmentPrior.MODES:
        raise CheckpointError(f"{path}: mode must be one of {', '.join(SegmentPrior.MODES)}, got {got['mode']!r}")
    return got


def top_k(scores: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """Indexes of the ``k`` largest finite ``scores`` ([n]), best first, ties by lower index;
    ``exclude`` is a boolean mask [n] (or None). Fewer than ``k`` when fewer are finite."""
    scores = np.asarray(scores)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    if exclude is not None and exclude.any():
        scores = np.where(exclude, -np.inf, scores)
    k = min(int(k), int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        top = np.flatnonzero(scores >= scores[part].min())  # every item tied at the cut-off too
    else:
        top = np.arange(len(scores))
    top = top[np.isfinite(scores[top])]
    return top[np.lexsort((top, -scores[top]))][:k]


def top_k_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k` of every row of ``scores`` [B, n] at once: (values, indexes), each [B, k]
    (k capped at n), best first, ties by lower index; a row with fewer than ``k`` finite scores
    is padded with its -inf entries, lowest index first. ``torch.topk`` does the work; rows whose
    ties straddle the cut-off (where topk's choice is unspecified) are re-done by a stable sort."""
    k = min(int(k), scores.shape[1])
    val, idx = torch.topk(scores, k, dim=1)
    if k == 0:
        return val, idx
    tied = (scores >= val[:, -1:]).sum(dim=1) > k
    if tied.any():
        v, i = torch.sort(scores[tied], dim=1, descending=True, stable=True)
        val[tied], idx[tied] = v[:, :k], i[:, :k]
    order = torch.argsort(idx, dim=1)  # inside the slate: by index, then stably by value
    val, idx = val.gather(1, order), idx.gather(1, order)
    order = torch.argsort(val, dim=1, descending=True, stable=True)
    return val.gather(1, order), idx.gather(1, order)


@dataclass
class Recommendation:
    user: object
    items: list[dict]  # {"item": raw id, "score": float, "title": str | None[, "utility": float]}
    fallback: bool  # the user is unknown to the model: most popular items
    reranked: bool = False

    def to_dict(self) -> dict:
        return {"user": self.user, "items": self.items, "fallback": self.fallback, "reranked": self.reranked}


class Recommender:
    """A model with its id maps, its training interactions (the seen filter), popularity counts
    (the fallback), item titles and optionally a re-ranker (anything with ``rerank(item_indexes,
    scores, k)``, e.g. :class:`ncf.rerank.lagrangian.PerRequestReranker`; layers above attach it,
    see :func:`ncf.rerank.lagrangian.load_reranker`)."""

    def __init__(self, model: Model, user_map: IdMap, item_map: IdMap, seen: sp.csr_matrix,
                 item_info: dict | None = None, reranker=None, rerank_reason: str | None = None,
                 cold_prior: dict | None = None):
        if seen.shape != (model.n_users, model.n_items):
            raise ConfigError(f"seen matrix {seen.shape} does not match the model ({model.n_users}, {model.n_items})")
        if (len(user_map), len(item_map)) != (model.n_users, model.n_items):
            raise CheckpointError(f"id maps hold {len(user_map)} users / {len(item_map)} items, the model "
                                  f"{model.n_users} / {model.n_items}: idmap.json does not belong to these weights")
        self.model = model
        self.user_map = user_map
        self.item_map = item_map
        self.seen = seen.tocsr()
        self.popularity = np.bincount(self.seen.indices, minlength=model.n_items).astype(np.float64)
        self.item_info = item_info
        self.reranker = reranker
        self.rerank_reason = rerank_reason or ("" if reranker is not None else "no re-ranker given")
        self.cold_settings = dict(cold_prior or {})  # SegmentPrior's mode / alpha (else its defaults)
        self._cold_prior = None

    @classmethod
    def from_run(cls, directory: str | Path, device: str = "cpu") -> Recommender:
        directory = Path(directory)
        model = load_model(directory, device=device)
        users, items = load_run_maps(directory)
        return cls(model, users, items, load_train_matrix(directory), load_item_info(directory),
                   cold_prior=load_cold_prior(directory))

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters(), torch.empty(0)).device

    def title(self, index: int) -> str | None:
        if self.item_info and self.item_info.get("titles"):
            return self.item_info["titles"][index]
        return None

    # -- the pieces every client shares ------------------------------------------------

    def items_mask(self, raw_items: Iterable | None) -> np.ndarray:
        """Boolean [n_items] mask of the raw item ids; ids unknown to the model are ignored
        (an interaction recorded online with an item the model never saw)."""
        mask = np.zeros(self.n_items, dtype=bool)
        for raw in raw_items or ():
            idx = self.item_map.get(raw)
            if idx is not None:
                mask[idx] = True
        return mask

    def candidates_mask(self, raw_items: Iterable) -> np.ndarray:
        """Boolean [n_items] mask of an ``items=`` candidate subset; unknown ids are an error."""
        raw_items = list(raw_items)
        idx = [self.item_map.get(r) for r in raw_items]
        unknown = [r for r, i in zip(raw_items, idx, strict=True) if i is None]
        if unknown:
            raise UnknownItemError(f"unknown item(s) in items=: {', '.join(map(repr, unknown[:10]))}"
                                   + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
        mask = np.zeros(self.n_items, dtype=bool)
        mask[np.asarray(idx, dtype=np.int64)] = True
        return mask

    def seen_items(self, user_index: int) -> np.ndarray:
        return self.seen.indices[self.seen.indptr[user_index]: self.seen.indptr[user_index + 1]]

    def item_dicts(self, idx: np.ndarray, scores: np.ndarray) -> list[dict]:
        return [{"item": self.item_map.raw(int(i)), "score": float(s), "title": self.title(int(i))}
                for i, s in zip(idx, scores, strict=True)]

    def popular(self, k: int, exclude: np.ndarray | None = None) -> list[dict]:
        """The fallback: the ``k`` items with most training interactions (``score`` = count)."""
        idx = top_k(self.popularity, exclude, k)
        return self.item_dicts(idx, self.popularity[idx])

    def slate(self, scores: np.ndarray, exclude: np.ndarray | None, k: int, rerank: bool = False,
              candidates: np.ndarray | None = None) -> list[dict]:
        """The ``k`` best items of one user: ``scores`` [n_items] (or aligned with ``candidates``,
        item indexes), ``exclude`` [n_items] left out; ``rerank`` applies the run's multipliers
        (each item then carries its ``utility``, the order it was chosen by)."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        scores = np.asarray(scores, dtype=np.float64)
        if candidates is None:
            candidates = np.arange(self.n_items)
        else:  # ascending, so that ties fall to the lower item index here too
            order = np.argsort(candidates, kind="stable")
            candidates, scores = np.asarray(candidates)[order], scores[order]
        if exclude is not None:
            keep = ~exclude[candidates]
            candidates, scores = candidates[keep], scores[keep]
        if not rerank:
            pos = top_k(scores, None, k)
            return self.item_dicts(candidates[pos], scores[pos])
        if self.reranker is None:
            raise RerankUnavailable(f"re-ranking not available: {self.rerank_reason}")
        finite = np.isfinite(scores)
        r = self.reranker.rerank(candidates[finite], scores[finite], k)
        by_item = dict(zip(candidates[finite].tolist(), scores[finite].tolist(), strict=True))
        items = self.item_dicts(r.items, np.array([by_item[i] for i in r.items.tolist()]))
        for it, u in zip(items, r.utility.tolist(), strict=True):
            it["utility"] = u
        return items

    @torch.no_grad()
    def scores(self, user_indexes: Sequence[int]) -> np.ndarray:
        """[B, n_items] model scores (float64) of known users."""
        users = torch.as_tensor(np.asarray(user_indexes, dtype=np.int64), device=self.device)
        return self.model.score_all(users).double().cpu().numpy()

    # -- recommendations ------------------------------------------------------------------

    def recommend_many(self, users: Sequence, k: int = 10, filter_seen: bool = True,
                       extra_seen: Sequence[Iterable] | None = None, items: Iterable | None = None,
                       rerank: bool = False, batch_size: int = 512) -> list[Recommendation]:
        """Top ``k`` for each raw user id, scored ``batch_size`` users at a time. ``extra_seen``:
        per user, raw item ids to leave out too; ``items``: only these raw item ids are candidates.
        Users unknown to the model get the most popular items, marked ``fallback``."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        users = list(users)
        if extra_seen is not None and len(extra_seen) != len(users):
            raise ConfigError(f"extra_seen has {len(extra_seen)} entries for {len(users)} users")
        base = np.zeros(self.n_items, dtype=bool) if items is None else ~self.candidates_mask(items)
        index = [self.user_map.get(u) for u in users]
        out: list[Recommendation | None] = [None] * len(users)
        known = [n for n, u in enumerate(index) if u is not None]
        for start in range(0, len(known), batch_size):
            part = known[start:start + batch_size]
            scores = self.scores([index[n] for n in part])
            for row, n in zip(scores, part, strict=True):
                u = index[n]
                exclude = base | self.items_mask(extra_seen[n] if extra_seen is not None else None)
                if filter_seen:
                    exclude[self.seen_items(u)] = True
                out[n] = Recommendation(self.user_map.raw(u), self.slate(row, exclude, k, rerank), False, rerank)
        for n, u in enumerate(index):
            if u is None:
                exclude = base | self.items_mask(extra_seen[n] if extra_seen is not None else None)
                out[n] = Recommendation(users[n], self.popular(k, exclude), True)
        return out

    def recommend(self, user, k: int = 10, filter_seen: bool = True, extra_seen: Iterable | None = None,
                  items: Iterable | None = None, rerank: bool = False) -> Recommendation:
        """Top ``k`` items for raw user id ``user`` (see :meth:`recommend_many`)."""
        return self.recommend_many([user], k, filter_seen, [list(extra_seen or ())], items, rerank)[0]

    def cold_prior(self):
        """The cold-start scorer of this run (:class:`ncf.coldstart.SegmentPrior`: popularity
        conditioned on the user fields, shrunk towards plain popularity), built once from the
        training interactions and the training users' feature values the model holds (widedeep)."""
        from ncf.coldstart import SegmentPrior

        if self._cold_prior is None:
            fields = getattr(self.model, "user_fields", None)
            if not fields:
                raise ConfigError(f"model {self.model.name!r} does not use user features: --features needs a "
                                  "widedeep run with user features (ncf train --model widedeep)")
            with torch.no_grad():
                codes = [c.cpu().numpy() for c in self.model.user_features(torch.arange(self.model.n_users,
                                                                                        device=self.device))]
            names = [f.name for f in fields]
            keep = [n for n, c in enumerate(codes) if c.ndim == 1]
            self._cold_prior = SegmentPrior(self.seen, [codes[n] for n in keep], field_names=[names[n] for n in keep],
                                            **self.cold_settings)
        return self._cold_prior

    def recommend_features(self, features: dict[str, str], k: int = 10) -> Recommendation:
        """Top ``k`` items for a new user known only by side features (``{"age": "25", ...}``):
        the run's cold-start scorer (:meth:`cold_prior`; ``score`` is its log-probability of the
        item). Unknown feature names or values raise ``ValueError`` listing the valid ones."""
        from ncf.data.features import encode_features

        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        prior = self.cold_prior()
        codes = [c for c in encode_features(self.model.user_fields, features) if c.ndim == 1]
        scores = prior.score_codes(codes)[0]
        return Recommendation(dict(features), self.slate(scores, None, k), False)

    def similar(self, item, k: int = 10) -> list[dict]:
        """Nearest items to raw item id ``item`` by cosine of the model's item embeddings."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        i = self.item_map.get(item)
        if i is None:
            raise UnknownItemError(f"unknown item {item!r}: not in the model's training data")
        emb = self.model.item_embeddings()
        if emb is None:
            raise ConfigError(f"model {self.model.name!r} has no item embeddings to compare")
        norms = emb.float().norm(dim=1).cpu().numpy()
        if not norms[i] > 0 or not np.isfinite(norms[i]):  # e.g. item2vec items below min_count
            why = f"fewer than min_count={self.model.hparams()['min_count']} training interactions" \
                if "min_count" in self.model.hparams() else "its embedding is zero"
            raise ConfigError(f"item {item!r} has no vector in this {self.model.name} run ({why})")
        emb = torch.nn.functional.normalize(emb.float(), dim=1)
        sims = (emb @ emb[i]).double().cpu().numpy()
        exclude = ~np.isfinite(sims) | ~(norms > 0)
        exclude[i] = True
        return self.slate(sims, exclude, k)
