"""Evaluation protocols over any Scorer, vectorised over batches of users.

- ``sampled``: the held-out item ranked among its candidate negatives (the NCF protocol:
  itself + 99). Padding in the candidate matrix is never a competitor.
- ``full``: the held-out item ranked among every item the user has not interacted with
  (``seen``: training items, plus validation items when evaluating test).
- ``topk``: the field's full-ranking protocol with every held-out item of a user relevant at
  once (recall, capped recall, NDCG, precision, MAP, HR, MRR, coverage @K; :mod:`ncf.eval.topk`).

Ties never favour the held-out item (see :func:`ncf.eval.metrics.pessimistic_rank`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ncf.data.split import PAD, HoldOut
from ncf.errors import ConfigError
from ncf.eval.metrics import pessimistic_rank, summarize

PROTOCOLS = ("sampled", "full", "topk")


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def sampled_ranks(model, holdout: HoldOut, batch_rows: int = 8192) -> np.ndarray:
    """0-based pessimistic rank of each held-out item among its candidates."""
    dev = _device_of(model)
    cand = holdout.candidates
    ranks = np.empty(len(holdout), dtype=np.int64)
    for s in range(0, len(holdout), batch_rows):
        c = cand[s: s + batch_rows]
        users = np.repeat(holdout.users[s: s + batch_rows], c.shape[1])
        items = np.where(c == PAD, 0, c).ravel()
        scores = model.score(torch.as_tensor(users, device=dev), torch.as_tensor(items, device=dev))
        scores = scores.float().cpu().numpy().reshape(c.shape)
        ranks[s: s + batch_rows] = pessimistic_rank(scores[:, 0], scores[:, 1:], c[:, 1:] != PAD)
    return ranks


def full_ranks(model, holdout: HoldOut, seen: sp.csr_matrix, batch_rows: int = 512) -> np.ndarray:
    """0-based pessimistic rank of each held-out item among all items not in ``seen``.

    Each distinct user is scored once (``score_all`` of a block of users whose held-out rows
    number at most ``batch_rows``, or one user's rows): a holdout with several rows a user
    (a ratio or given split) costs one scoring of each user, not one per row."""
    dev = _device_of(model)
    seen = seen.tocsr()
    users_all = np.asarray(holdout.users, dtype=np.int64)
    items_all = np.asarray(holdout.items, dtype=np.int64)
    order = np.argsort(users_all, kind="stable")
    uniq, first = np.unique(users_all[order], return_index=True)
    bounds = np.append(first, len(order))  # rows of user uniq[j]: order[bounds[j]:bounds[j + 1]]
    ranks = np.empty(len(holdout), dtype=np.int64)
    s = 0
    while s < len(uniq):
        e = min(len(uniq), max(s + 1, int(np.searchsorted(bounds, bounds[s] + batch_rows, side="right")) - 1))
        sel = order[bounds[s]: bounds[e]]
        users = users_all[sel]
        scores = model.score_all(torch.as_tensor(uniq[s:e], device=dev)).float()  # [b, I]
        local = np.searchsorted(uniq[s:e], users)
        if len(sel) >= SORT_FROM * (e - s) and not torch.isnan(scores).any():
            ranks[sel] = _ranks_by_sorting(scores, local, items_all[sel], seen[uniq[s:e]], bounds[s:e + 1] - bounds[s])
        else:
            ranks[sel] = _ranks_by_comparing(scores[torch.as_tensor(local, device=dev)], items_all[sel], seen[users])
        s = e
    return ranks


# held-out rows a user from which sorting each user's scores once beats comparing them once a row
SORT_FROM = 8


def _ranks_by_comparing(scores: torch.Tensor, items: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """Ranks of ``items`` [r] in the rows of ``scores`` [r, I] (one row a held-out item), ``seen``
    [r, I] no competitors, nor the item itself; a NaN score beats everything."""
    dev = scores.device
    rows = torch.arange(len(items), device=dev)
    items = torch.as_tensor(items, device=dev)
    pos = scores[rows, items][:, None]
    beats = (scores >= pos).logical_or_(torch.isnan(scores)).logical_or_(torch.isnan(pos))
    r = np.repeat(np.arange(len(items)), np.diff(seen.indptr))
    beats[torch.from_numpy(r).to(dev), torch.from_numpy(seen.indices.astype(np.int64)).to(dev)] = False
    beats[rows, items] = False
    return beats.sum(dim=1).cpu().numpy()


def _ranks_by_sorting(scores: torch.Tensor, local: np.ndarray, items: np.ndarray, seen: sp.csr_matrix,
                      offsets: np.ndarray) -> np.ndarray:
    """The same ranks as :func:`_ranks_by_comparing` for a block of users with many held-out rows
    each (no NaN): each user's scores [b, I] sorted once, every held-out score placed by binary
    search. ``local`` [r]: each row's user in the block, rows grouped by user as ``offsets`` [b + 1]."""
    dev = scores.device
    pos = scores[torch.as_tensor(local, device=dev), torch.as_tensor(items, device=dev)]  # [r]
    masked = scores.clone()
    r = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
    masked[torch.from_numpy(r).to(dev), torch.from_numpy(seen.indices.astype(np.int64)).to(dev)] = -torch.inf
    ordered = torch.sort(masked, dim=1).values  # ascending
    width = int(np.diff(offsets).max())
    col = np.arange(len(items)) - np.repeat(offsets[:-1], np.diff(offsets))
    values = torch.full((len(offsets) - 1, width), torch.inf, device=dev)
    values[torch.as_tensor(local, device=dev), torch.as_tensor(col, device=dev)] = pos
    below = torch.searchsorted(ordered, values, side="left")[torch.as_tensor(local, device=dev),
                                                               torch.as_tensor(col, device=dev)]
    at_least = scores.shape[1] - below  # items scoring >= the held-out one, seen ones at -inf, itself included
    n_seen = torch.as_tensor(np.diff(seen.indptr)[local], device=dev)
    # a held-out item scored -inf ties with the seen items' -inf, which are no competitors
    return (at_least - 1 - torch.where(torch.isneginf(pos), n_seen, 0)).cpu().numpy()


def evaluate(model, holdout: HoldOut, protocol: str = "sampled", seen: sp.csr_matrix | None = None,
             ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    if not len(holdout):
        raise ConfigError("nothing to evaluate: the holdout is empty")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        if protocol == "sampled":
            return summarize(sampled_ranks(model, holdout), ks)
        if seen is None:
            raise ConfigError(f"the {protocol} protocol needs the users' seen items")
        if protocol == "topk":
            from ncf.eval.topk import evaluate_topk

            return evaluate_topk(model, holdout, seen, ks)
        return summarize(full_ranks(model, holdout, seen), ks, full=True)
    finally:
        if was_training:
            model.train()
