"""Fold-in: a user's recommendations follow the interactions POSTed for them (issue 18).

Two kinds, chosen from the model:

- ``vector`` (models with user tables, ``Model.foldin_tables``: GMF, MLP, NeuMF, BPR): a user
  vector fitted to the user's training items plus the items recorded online, starting from
  the trained vector (a known user) or the mean user (a user the model never saw). For the
  NCF models, whose ranker holds each item's score as an affine function of the user vector
  (exact for GMF, first-order at the mean user for the MLP term: ``linear_terms``), the fit is Newton's method
  on the model's BCE (``newton_fold_in``: a d x d solve per iteration, about a millisecond);
  for others (BPR) it is ``Model.fold_in`` (a few Adam steps through the model, ~100 ms).
  The vector is written to the feature store beside the run's user rows, with the number of
  recorded items it covers, and scored like a trained vector (for NCF models by the ranker, so
  two-stage and ANN retrieval apply).
- ``history`` (models that score histories directly: EASE, item-KNN, item2vec, iALS's
  closed-form user step, popularity): ``score_histories`` of the training items plus the
  recorded ones, computed per request (nothing to store but the interactions themselves).

Cost per interaction is bounded: ``steps`` Adam steps over at most ``max_history`` items
(``Model.fold_in``), whatever the history's length. The vector is computed inside the POST,
so the next GET sees it. Durability: the stored vector is a derivative of the recorded
interactions; where it is missing or covers fewer interactions than the store holds (an
in-process store restarted from its journal, a write lost, another replica's POST), the
next GET recomputes it from the recorded interactions and stores it again.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ncf.models import Model
from ncf.serve.retrieval import NCFRanker, Ranker
from ncf.serve.store import FeatureStore, UserState

PRIOR = 0.1  # L2 pull towards the starting vector, per fold-in (the loss is a mean over positives)


def newton_fold_in(ranker: NCFRanker, history: np.ndarray, init: np.ndarray, prior: float = PRIOR,
                   negatives: int = 4, iters: int = 10, seed: int = 0, samples: int = 64,
                   max_rows: int = 4096) -> np.ndarray:
    """[user_dim] float32: the user vector minimising the model's BCE over ``history`` (positives)
    and ``negatives`` uniform items per positive (seeded), scores taken as the affine functions of
    ``NCFRanker.linear_terms`` (exact for GMF, first-order for the MLP term), plus ``prior`` *
    |u - init|², by Newton's method (a d x d solve per iteration: no autograd, well under a
    millisecond of arithmetic for a history of 200 items)."""
    history = np.unique(np.asarray(history, np.int64))
    if not len(history):
        return np.asarray(init, np.float32)
    rng = np.random.default_rng(seed)
    # many more negative samples than the training ratio, each weighted down to keep that ratio:
    # the same objective in expectation, far less noise for a history of a few items
    n_neg = min(max(samples * len(history), 256), max_rows)
    neg = rng.integers(0, ranker.n_items, n_neg)
    neg = neg[~np.isin(neg, history)]
    a, o = ranker.linear_terms(np.concatenate([history, neg]))
    y = np.zeros(len(a))
    y[:len(history)] = 1.0
    w = np.full(len(a), negatives * len(history) / max(1, len(neg)))
    w[:len(history)] = 1.0
    w /= len(history)
    u0 = np.asarray(init, np.float64)
    u = u0.copy()
    eye = np.eye(len(u))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(o + a @ u)))
        grad = a.T @ (w * (p - y)) + 2 * prior * (u - u0)
        hess = (a.T * (w * p * (1 - p))) @ a + 2 * prior * eye
        step = np.linalg.solve(hess, grad)
        u -= step
        if np.abs(step).max() < 1e-6:
            break
    return u.astype(np.float32)


def foldin_kind(model: Model) -> str | None:
    """``"vector"``, ``"history"`` or None (the model cannot use recorded interactions)."""
    if model.foldin_tables:
        return "vector"
    if type(model).score_histories is not Model.score_histories:
        return "history"
    return None


class FoldIn:
    """Fold-in for one service: ``update`` after a POST, ``current`` when recommending."""

    def __init__(self, model: Model, ranker: Ranker, item_index, steps: int = 20, max_history: int = 200,
                 prior: float = PRIOR, negatives: int = 4):
        self.kind = foldin_kind(model)
        self.ranker, self.item_index = ranker, item_index  # item_index: raw id (str) -> index | None
        self.steps, self.max_history = steps, max_history
        self.ncf = isinstance(ranker, NCFRanker)
        # fold-in swaps the user tables during a call (torch.func.functional_call); models scored
        # through their own tables (not through the ranker's bound arrays) get a private copy so
        # that a concurrent request never sees a swapped table
        self.model = model if self.ncf or self.kind != "vector" else copy.deepcopy(model)
        self.model.eval()
        self.prior, self.negatives = prior, negatives
        if self.ncf:
            self.mean = ranker.user_vectors().astype(np.float64).mean(axis=0)

    def history(self, state: UserState) -> torch.Tensor:
        """Item indexes of the user's training items (in the model's own order where it keeps one:
        sequence models), then the recorded ones in recording order (unknown ids dropped)."""
        recorded = [i for i in (self.item_index(e) for e in state.events) if i is not None]
        own = self.model.training_history(state.index) if state.index is not None else None
        trained = own.numpy() if own is not None else np.asarray(state.seen, np.int64)
        hist = np.concatenate([trained.astype(np.int64), np.asarray(recorded, np.int64)])
        return torch.from_numpy(hist[-self.max_history:])

    def compute(self, state: UserState) -> np.ndarray:
        """[D] float32 fold-in vector of a user (``vector`` kind)."""
        if self.ncf:
            init = state.vector if state.index is not None and state.vector is not None else self.mean
            return newton_fold_in(self.ranker, self.history(state).numpy(), np.asarray(init, np.float64),
                                  self.prior, self.negatives)
        init = None
        if state.index is not None and state.vector is not None and self.ncf:
            init = torch.from_numpy(np.asarray(state.vector, np.float32))[None]
        elif state.index is not None:  # a model scored through its tables: start from the trained row
            params = dict(self.model.named_parameters())
            init = torch.cat([params[n].detach()[state.index] for n in self.model.foldin_tables])[None]
        v = self.model.fold_in([self.history(state)], init=init, steps=self.steps, max_history=self.max_history)
        return v[0].float().cpu().numpy()

    def update(self, store: FeatureStore, run_id: str, user: str, state: UserState) -> None:
        """Recompute and store the user's vector (after an interaction was recorded)."""
        if self.kind == "vector" and state.events:
            store.write_foldin(run_id, user, self.compute(state), len(state.events))

    def current(self, store: FeatureStore, run_id: str, user: str,
                state: UserState) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(vector, scores) to recommend from for a user with recorded interactions: a vector
        for the ranker (NCF models), or [n_items] scores; (None, None) where fold-in does not apply."""
        if not state.events or self.kind is None:
            return None, None
        if self.kind == "history":
            with torch.no_grad():
                return None, self.model.score_histories([self.history(state)])[0].double().cpu().numpy()
        got = store.read_foldin(run_id, user)
        if got is None or got[1] != len(state.events) or len(got[0]) != self.model.foldin_dim():
            vector = self.compute(state)
            store.write_foldin(run_id, user, vector, len(state.events))
        else:
            vector = got[0]
        if self.ncf:
            return vector, None
        scores = self.model.score_vectors(torch.from_numpy(vector)[None])[0]
        return None, scores.double().cpu().numpy()
