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


def full_ranks(model, holdout: HoldOut, seen: sp.csr_matrix, batch_users: int = 512) -> np.ndarray:
    """0-based pessimistic rank of each held-out item among all items not in ``seen``."""
    dev = _device_of(model)
    seen = seen.tocsr()
    ranks = np.empty(len(holdout), dtype=np.int64)
    for s in range(0, len(holdout), batch_users):
        users = holdout.users[s: s + batch_users]
        items = torch.tensor(holdout.items[s: s + batch_users], dtype=torch.int64, device=dev)
        scores = model.score_all(torch.tensor(users, device=dev)).float()  # [b, I]
        rows = torch.arange(len(users), device=dev)
        pos = scores[rows, items][:, None]
        beats = (scores >= pos).logical_or_(torch.isnan(scores)).logical_or_(torch.isnan(pos))
        sub = seen[users]
        r = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
        # seen items and the item itself are no competitors
        beats[torch.from_numpy(r).to(dev), torch.from_numpy(sub.indices.astype(np.int64)).to(dev)] = False
        beats[rows, items] = False
        ranks[s: s + batch_users] = beats.sum(dim=1).cpu().numpy()
    return ranks


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
