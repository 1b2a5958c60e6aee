"""The field's full-ranking protocol (``topk``): every user ranks all items except the ones
seen in training (plus validation when evaluating test), and every held-out item of the user is
relevant. One top-max(K) list per user serves every cut-off K.

Every metric is a pure function of ``hits`` (``[U, K]`` bool: is the item at rank r of the
user's top-K list held out for the user?) and ``n_relevant`` (``[U]``: how many items are held
out for the user, at least 1), averaged over users:

- ``precision@K`` = hits / K
- ``recall@K`` = hits / n_relevant (LightGCN's and NGCF's recall: a user with more held-out items
  than K cannot reach 1)
- ``capped_recall@K`` = hits / min(n_relevant, K) (Mult-VAE's recall: 1 is reachable)
- ``hr@K`` = 1 if any hit
- ``mrr@K`` = 1 / (rank of the first hit), 0 without one (ranks from 1)
- ``map@K`` = Σ_r precision@r · hit_r / min(n_relevant, K)
- ``ndcg@K`` = Σ_r hit_r / log2(r + 1) divided by the same for min(n_relevant, K) hits at the top
  (binary gains)

``coverage@K`` is the share of the catalogue that appears in at least one top-K list.
The top-K list excludes the user's ``seen`` items; ties in score go to the lower item index
(:func:`ncf.recommend.top_k_rows`, the library's one row-wise top-k).

Validation during tuning calls the same function as test:
``evaluate_topk(model, dataset.valid, dataset.train.matrix, ks)`` (or
``ncf.eval.evaluator.evaluate(model, holdout, "topk", seen=..., ks=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ncf.errors import ConfigError
from ncf.recommend import block_users, csr_row_entries, exclude_, top_k_rows, writable_scores


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


def capped_recall_at_k(hits, n_relevant) -> float:
    hits, n_rel = _check(hits, n_relevant)
    return float((hits.sum(axis=1) / np.minimum(n_rel, hits.shape[1])).mean()) if len(hits) else 0.0


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


METRICS = ("recall", "capped_recall", "ndcg", "precision", "map", "hr", "mrr", "coverage")


def summarize_topk(hits, n_relevant, topk: np.ndarray, n_items: int, ks: int | Sequence[int]) -> dict[str, float]:
    """Every metric at every cut-off in ``ks`` from one list per user: ``hits`` and ``topk``
    ``[U, max(ks)]`` (or fewer columns where the catalogue is smaller), ``n_relevant`` ``[U]``.
    Keys ``metric@K``, grouped by K in ``ks`` order."""
    ks = _ks(ks)
    hits, topk = np.asarray(hits, dtype=bool), np.asarray(topk)
    out = {}
    for k in ks:
        h, t = hits[:, :k], topk[:, :k]
        out.update({f"recall@{k}": recall_at_k(h, n_relevant), f"capped_recall@{k}": capped_recall_at_k(h, n_relevant),
                    f"ndcg@{k}": ndcg_at_k(h, n_relevant), f"precision@{k}": precision_at_k(h, n_relevant),
                    f"map@{k}": map_at_k(h, n_relevant), f"hr@{k}": hit_rate_at_k(h, n_relevant),
                    f"mrr@{k}": mrr_at_k(h, n_relevant), f"coverage@{k}": coverage(t, n_items)})
    return out


def _ks(ks: int | Sequence[int]) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, int | np.integer) else tuple(ks)
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ConfigError(f"cut-offs must be whole numbers >= 1, got {ks!r}")
    return tuple(dict.fromkeys(int(k) for k in ks))


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def top_k_lists(model, users: np.ndarray, seen: sp.csr_matrix | None, k: int, batch_users: int | None = None,
                progress=None) -> np.ndarray:
    """``[len(users), min(k, n_items)]`` item indexes: each user's best-scored items outside ``seen``
    (ties to the lower index; a user with fewer unseen items than k gets seen ones last, never
    counted as hits). ``batch_users`` users are scored at a time (None: :func:`block_users`, about
    256 MiB of scores): one ``score_all`` block, the seen items set to -inf from the CSR arrays at
    once, one :func:`top_k_rows`."""
    seen = None if seen is None else seen.tocsr()
    batch_users = block_users(seen.shape[1] if seen is not None else model.n_items) if batch_users is None \
        else int(batch_users)
    if batch_users < 1:
        raise ConfigError(f"batch_users must be >= 1, got {batch_users}")
    dev = _device_of(model)
    users = np.asarray(users, dtype=np.int64)
    out = None
    for s in range(0, len(users), batch_users):
        u = users[s: s + batch_users]
        scores = writable_scores(model.score_all(torch.as_tensor(u, device=dev)))
        if seen is not None:
            exclude_(scores, *csr_row_entries(seen, u))
        idx = top_k_rows(scores, k)[1].cpu().numpy()
        if out is None:
            out = np.empty((len(users), idx.shape[1]), dtype=np.int64)
        out[s: s + len(u)] = idx
        if progress is not None:
            progress(len(u))
    return np.empty((0, k), dtype=np.int64) if out is None else out


def relevance_hits(users: np.ndarray, lists: np.ndarray, rel_users: np.ndarray, rel_items: np.ndarray,
                   n_items: int) -> np.ndarray:
    """``[U, K]`` bool: is ``lists[u, r]`` one of ``users[u]``'s relevant items (the pairs
    ``rel_users``, ``rel_items``)? By binary search among the sorted pair keys, no matrix."""
    keys = np.unique(np.asarray(rel_users, np.int64) * n_items + np.asarray(rel_items, np.int64))
    want = (np.asarray(users, np.int64)[:, None] * n_items + lists).ravel()
    at = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
    return (keys[at] == want).reshape(lists.shape) if len(keys) else np.zeros(lists.shape, dtype=bool)


def evaluate_topk_pairs(model, users: np.ndarray, items: np.ndarray, seen: sp.csr_matrix | None,
                        ks: int | Sequence[int] = (10,), batch_users: int | None = None,
                        progress=None) -> dict[str, float]:
    """The ``topk`` protocol from held-out pairs: ``users``, ``items`` ``[P]`` (a user may have
    several; a repeated pair counts once), ``seen`` ``[n_users, n_items]`` CSR (None: nothing
    left out). Every user with a held-out item is evaluated; see :func:`summarize_topk` for the
    keys. ``model`` needs ``score_all(users) -> [B, n_items]`` (and ``n_items``)."""
    users_all = np.asarray(users, dtype=np.int64)
    items_all = np.asarray(items, dtype=np.int64)
    if not len(users_all):
        raise ConfigError("nothing to evaluate: the holdout is empty")
    if len(items_all) != len(users_all):
        raise ConfigError(f"{len(users_all)} held-out users but {len(items_all)} items: they must be pairs")
    ks = _ks(ks)
    n_items = int(seen.shape[1] if seen is not None else model.n_items)
    pairs = np.unique(users_all * n_items + items_all)
    test_users, n_rel = np.unique(pairs // n_items, return_counts=True)
    was = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        lists = top_k_lists(model, test_users, seen, max(ks), batch_users, progress)
    finally:
        if was:
            model.train()
    hits = relevance_hits(test_users, lists, pairs // n_items, pairs % n_items, n_items)
    return summarize_topk(hits, n_rel, lists, n_items, ks)


def evaluate_topk(model, holdout, seen: sp.csr_matrix, k: int | Sequence[int] = 10, batch_users: int | None = None,
                  progress=None) -> dict[str, float]:
    """Top-k metrics of ``model`` for a holdout with one row per held-out (user, item) — a
    user may have several rows — against the user's ``seen`` items, at every cut-off in ``k``
    (one int or several: ``(10, 20)``); :func:`evaluate_topk_pairs` does the work."""
    return evaluate_topk_pairs(model, holdout.users, holdout.items, seen, k, batch_users, progress)
