"""Recommendations from a run directory, with raw ids in and out (no HTTP here).

Seen items are excluded by default; an unknown user gets the most popular items,
flagged ``fallback``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ncf.checkpoint import load_item_info, load_model, load_run_maps, load_train_matrix
from ncf.data.interactions import IdMap
from ncf.models import Model


class UnknownItemError(KeyError):
    pass


@dataclass
class Recommendation:
    user: object
    items: list[dict]
    fallback: bool

    def to_dict(self) -> dict:
        return {"user": self.user, "items": self.items, "fallback": self.fallback}


class Recommender:
    def __init__(self, model: Model, user_map: IdMap, item_map: IdMap, seen: sp.csr_matrix,
                 item_info: dict | None = None):
        if seen.shape != (model.n_users, model.n_items):
            raise ValueError(f"seen matrix {seen.shape} does not match the model ({model.n_users}, {model.n_items})")
        self.model = model
        self.user_map = user_map
        self.item_map = item_map
        self.seen = seen.tocsr()
        self.popularity = np.bincount(self.seen.indices, minlength=model.n_items).astype(np.float64)
        self.item_info = item_info

    @classmethod
    def from_run(cls, directory: str | Path, device: str = "cpu") -> Recommender:
        directory = Path(directory)
        model = load_model(directory, device=device)
        users, items = load_run_maps(directory)
        return cls(model, users, items, load_train_matrix(directory), load_item_info(directory))

    @property
    def n_items(self) -> int:
        return self.model.n_items

    def title(self, index: int) -> str | None:
        if self.item_info and self.item_info.get("titles"):
            return self.item_info["titles"][index]
        return None

    def _top(self, scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
        scores = scores.astype(np.float64, copy=True)
        scores[exclude] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        cand = np.flatnonzero(scores >= scores[top].min())  # every item tied at the cut-off too
        return cand[np.lexsort((cand, -scores[cand]))][:k]  # ties: lower index first, deterministic

    def _items(self, idx: np.ndarray, scores: np.ndarray) -> list[dict]:
        return [{"item": self.item_map.raw(i), "score": float(scores[i])} for i in idx]

    def popular(self, k: int, exclude: np.ndarray | None = None) -> list[dict]:
        ex = np.zeros(self.n_items, bool) if exclude is None else exclude
        return self._items(self._top(self.popularity, ex, k), self.popularity)

    def seen_items(self, user_index: int) -> np.ndarray:
        return self.seen.indices[self.seen.indptr[user_index]: self.seen.indptr[user_index + 1]]

    def recommend(self, user, k: int = 10, exclude_seen: bool = True, extra_seen: list | None = None) -> Recommendation:
        """Top ``k`` items for raw user id ``user``; ``extra_seen`` are raw item ids to exclude too."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        exclude = np.zeros(self.n_items, dtype=bool)
        for raw in extra_seen or []:
            idx = self.item_map.get(raw)
            if idx is not None:
                exclude[idx] = True
        u = self.user_map.get(user)
        if u is None:
            return Recommendation(user, self.popular(k, exclude), True)
        if exclude_seen:
            exclude[self.seen_items(u)] = True
        dev = next(self.model.parameters(), torch.empty(0)).device
        scores = self.model.score_all(torch.tensor([u], device=dev))[0].float().cpu().numpy()
        return Recommendation(self.user_map.raw(u), self._items(self._top(scores, exclude, k), scores), False)

    def recommend_features(self, features: dict[str, str], k: int = 10) -> Recommendation:
        """Top ``k`` items for a new user known only by side features (``{"age": "25", ...}``),
        from a model that scores features (``score_all_features``: widedeep). Unknown feature
        names or values raise ``ValueError`` listing the valid ones."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not hasattr(self.model, "score_all_features"):
            raise ValueError(f"model {self.model.name!r} does not use user features: --features needs a "
                             "widedeep run (ncf train --model widedeep)")
        scores = self.model.score_all_features(self.model.encode_features(features), 1)[0].float().cpu().numpy()
        top = self._top(scores, np.zeros(self.n_items, dtype=bool), k)
        return Recommendation(dict(features), self._items(top, scores), False)

    def similar(self, item, k: int = 10) -> list[dict]:
        """Nearest items to raw item id ``item`` by cosine of the model's item embeddings."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        i = self.item_map.get(item)
        if i is None:
            raise UnknownItemError(f"unknown item {item!r}: not in the model's training data")
        emb = self.model.item_embeddings()
        if emb is None:
            raise ValueError(f"model {self.model.name!r} has no item embeddings to compare")
        norms = emb.float().norm(dim=1).cpu().numpy()
        if not norms[i] > 0 or not np.isfinite(norms[i]):  # e.g. item2vec items below min_count
            why = f"fewer than min_count={self.model.hparams()['min_count']} training interactions" \
                if "min_count" in self.model.hparams() else "its embedding is zero"
            raise ValueError(f"item {item!r} has no vector in this {self.model.name} run ({why})")
        emb = torch.nn.functional.normalize(emb.float(), dim=1)
        sims = (emb @ emb[i]).cpu().numpy()
        exclude = np.zeros(self.n_items, dtype=bool)
        exclude[i] = True
        exclude |= ~np.isfinite(sims) | ~(norms > 0)
        top = self._top(sims, exclude, k)
        return [{"item": self.item_map.raw(j), "score": float(sims[j]), "title": self.title(j)} for j in top]
