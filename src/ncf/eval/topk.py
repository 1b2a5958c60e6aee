"""Top-k metrics with several held-out items per user, and the evaluator behind them.

Every metric is a pure function of ``hits`` (``[U, k]`` bool: is the item at rank r of the
user's top-k list held out for the user?) and ``n_relevant`` (``[U]``: how many items are held
out for the user, at least 1), averaged over users:

- ``precision@k`` = hits / k
- ``recall@k`` = hits / n_relevant
- ``hr@k`` = 1 if any hit
- ``mrr@k`` = 1 / (rank of the first hit), 0 without one (ranks from 1)
- ``map@k`` = Σ_r precision@r · hit_r / min(n_relevant, k)
- ``ndcg@k`` = Σ_r hit_r / log2(r + 1) divided by the same for min(n_relevant, k) hits at the top

``coverage@k`` is the share of the catalogue that appears in at least one top-k list.
The top-k list excludes the user's ``seen`` items (training, plus validation for test); ties
in score go to the lower item index.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ncf.errors import ConfigError


def _check(hits: np.ndarray, n_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if hits.ndim != 2 or len(n_rel) != len(hits):
        raise ConfigError(f"hits must be [U, k] and n_relevant [U], got {hits.shape} and {n_rel.shape}")
    if len(n_rel) and n_rel.min() < 1:
        raise ConfigError("every user needs at least one relevant item")
    return hits, n_rel


def precision_at_k(hits, n_relevant) -> float:
    hits, _ = _check(hits, n_relevant)
    return float(hits.mean(axis=1).mean()) if len(hits) else 0.0


def recall_at_k(hits, n_relevant) -> float:
    hits, n_rel = _check(hits, n_relevant)
    return float((hits.sum(axis=1) / n_rel).mean()) if len(hits) else 0.0


def hit_rate_at_k(hits, n_relevant) -> float:
    hits, _ = _check(hits, n_relevant)
    return float(hits.any(axis=1).mean()) if len(hits) else 0.0


def mrr_at_k(hits, n_relevant) -> float:
    hits, _ = _check(hits, n_relevant)
    if not len(hits):
        return 0.0
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1.0, np.inf)
    return float((1.0 / first).mean())


def map_at_k(hits, n_relevant) -> float:
    hits, n_rel = _check(hits, n_relevant)
    if not len(hits):
        return 0.0
    k = hits.shape[1]
    prec = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return float(((prec * hits).sum(axis=1) / np.minimum(n_rel, k)).mean())


def ndcg_at_k(hits, n_relevant) -> float:
    hits, n_rel = _check(hits, n_relevant)
    if not len(hits):
        return 0.0
    k = hits.shape[1]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * disc).sum(axis=1)
    idcg = np.cumsum(disc)[np.minimum(n_rel, k).astype(np.int64) - 1]
    return float((dcg / idcg).mean())


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalogue recommended to at least one user (``topk`` ``[U, k]``)."""
    return float(len(np.unique(np.asarray(topk).ravel())) / n_items) if n_items else 0.0


def summarize_topk(hits, n_relevant, topk: np.ndarray, n_items: int, k: int) -> dict[str, float]:
    return {f"recall@{k}": recall_at_k(hits, n_relevant), f"precision@{k}": precision_at_k(hits, n_relevant),
            f"map@{k}": map_at_k(hits, n_relevant), f"mrr@{k}": mrr_at_k(hits, n_relevant),
            f"ndcg@{k}": ndcg_at_k(hits, n_relevant), f"hr@{k}": hit_rate_at_k(hits, n_relevant),
            f"coverage@{k}": coverage(topk, n_items)}


def top_k_lists(model, users: np.ndarray, seen: sp.csr_matrix, k: int, batch_users: int = 512) -> np.ndarray:
    """``[len(users), k]`` item indexes: each user's k best-scored items outside ``seen``
    (ties to the lower index)."""
    try:
        dev = next(model.parameters()).device
    except (AttributeError, StopIteration):
        dev = torch.device("cpu")
    seen = seen.tocsr()
    out = np.empty((len(users), k), dtype=np.int64)
    for s in range(0, len(users), batch_users):
        u = users[s: s + batch_users]
        scores = model.score_all(torch.as_tensor(u, device=dev)).float()
        sub = seen[u]
        rows = np.repeat(np.arange(len(u)), np.diff(sub.indptr))
        scores[torch.from_numpy(rows).to(dev), torch.from_numpy(sub.indices.astype(np.int64)).to(dev)] = -torch.inf
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        out[s: s + batch_users] = order.cpu().numpy()
    return out


def evaluate_topk(model, holdout, seen: sp.csr_matrix, k: int = 10) -> dict[str, float]:
    """Top-k metrics of ``model`` for a holdout with one row per held-out (user, item) — a
    user may have several rows — against the user's ``seen`` items."""
    users_all = np.asarray(holdout.users, dtype=np.int64)
    if not len(users_all):
        raise ConfigError("nothing to evaluate: the holdout is empty")
    n_items = seen.shape[1]
    rel = sp.csr_matrix((np.ones(len(users_all), np.float32), (users_all, np.asarray(holdout.items))),
                        shape=(seen.shape[0], n_items))
    rel.data[:] = 1.0
    users = np.unique(users_all)
    was = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        topk = top_k_lists(model, users, seen, min(k, n_items))
    finally:
        if was:
            model.train()
    rel_u = rel[users]
    hits = np.asarray(rel_u[np.arange(len(users))[:, None], topk].todense(), dtype=bool)
    n_rel = np.diff(rel_u.indptr)
    return summarize_topk(hits, n_rel, topk, n_items, k)
