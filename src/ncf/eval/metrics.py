"""Ranking metrics as pure functions of 0-based ranks (one held-out item per user).

``rank`` is the number of competitors placed before the held-out item; ties count
against it (pessimistic), so a constant scorer never looks good.
"""

from __future__ import annotations

import numpy as np


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """HR@K: share of users whose held-out item is in the top K."""
    ranks = np.asarray(ranks)
    return float((ranks < k).mean()) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: 1 / log2(rank + 2) inside the top K, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        return 0.0
    return float(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0).mean())


def recall(ranks: np.ndarray, k: int) -> float:
    """Recall@K; with one held-out item per user it equals HR@K."""
    return hit_rate(ranks, k)


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the whole ranking (no cut-off)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float((1.0 / (ranks + 1.0)).mean()) if len(ranks) else 0.0


def pessimistic_rank(pos_score: np.ndarray, other_scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Rank of each row's positive among its competitors: #(score > pos) + #(score == pos).

    ``pos_score``: [U]; ``other_scores``: [U, C]; ``valid``: [U, C] mask of real competitors.
    NaN scores count as beating the positive.
    """
    pos = pos_score[:, None]
    beats = (other_scores >= pos) | np.isnan(other_scores) | np.isnan(pos)
    if valid is not None:
        beats &= valid
    return beats.sum(axis=1)


def summarize(ranks: np.ndarray, ks: tuple[int, ...] = (10,), full: bool = False) -> dict[str, float]:
    """``{"hr@K": …, "ndcg@K": …}`` (plus ``recall@K`` and ``mrr`` for the full protocol)."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
        if full:
            out[f"recall@{k}"] = recall(ranks, k)
    if full:
        out["mrr"] = mrr(ranks)
    return out
