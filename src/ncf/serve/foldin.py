"""Fold-in: a user's recommendations follow the interactions POSTed for them (issue 18).

Two kinds, chosen from the model:

- ``vector`` (models with user tables, ``Model.foldin_tables``: GMF, MLP, NeuMF, MF, BPR): a user
  vector fitted to the user's training items plus the items recorded online, starting from
  the trained vector (a known user) or the mean user (a user the model never saw). For the
  NCF models, whose ranker holds each item's score as an affine function of the user vector
  (exact for GMF, first-order at the mean user for the MLP term: ``linear_terms``), the fit is Newton's method
  on the model's BCE (``newton_fold_in``: a d x d solve per iteration, about a millisecond);
  MF's logit is affine in ``[p_u ; b_u]`` exactly, and its ``Model.fold_in`` is the same Newton
  solve (``MF.linear_terms``); for others (BPR) it is ``Model.fold_in`` (a few Adam steps
  through the model, ~100 ms).
  The vector is written to the feature store beside the run's user rows, with the number of
  recorded items it covers, and scored like a trained vector (for NCF models by the ranker, so
  two-stage and ANN retrieval apply).
- ``history`` (models that score histories directly: EASE, item-KNN, item2vec, iALS's
  closed-form user step, popularity, and the ensemble, which blends its members'
  ``score_histories`` as it blends their ``score_all``): ``score_histories`` of the training
  items plus the recorded ones, computed per request (nothing to store but the interactions
  themselves).

Cost per interaction is bounded: at most ``max_history`` items (the latest) enter a fold-in,
with ``steps`` Adam steps (``Model.fold_in``) or at most 10 Newton iterations over at most 4,096
scored items, whatever the history's length. The vector is computed inside the POST,
so the next GET sees it. Durability: the stored vector is a derivative of the recorded
interactions; where it is missing or covers fewer interactions than the store holds (an
in-process store restarted from its journal, a write lost, another replica's POST), the
next GET recomputes it from the recorded interactions and stores it again.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch

from ncf.errors import ConfigError
from ncf.models import Model
from ncf.models.base import NEWTON_PRIOR, newton_fold_in
from ncf.serve.retrieval import NCFRanker, Ranker
from ncf.serve.store import FeatureStore, UserState

PRIOR = NEWTON_PRIOR  # L2 pull towards the starting vector (ncf.models.base)
FOLDIN_FILE = "foldin.json"  # beside a run: {"prior": ...} chosen on validation (benchmarks/foldin_prior.py)


def check_prior(prior, where: str) -> float:
    """``prior`` as a float, or ConfigError naming ``where`` (it must be a positive finite number)."""
    ok = isinstance(prior, int | float) and not isinstance(prior, bool) and math.isfinite(prior) and prior > 0
    if not ok:
        raise ConfigError(f"{where}: the fold-in prior must be a positive number, got {prior!r}")
    return float(prior)


def run_prior(run_dir: Path) -> float:
    """The Newton fold-in prior of a run: ``RUN/foldin.json``'s ``prior`` where the file exists
    (written by ``benchmarks/foldin_prior.py --write`` from a choice on validation), else ``PRIOR``."""
    path = Path(run_dir) / FOLDIN_FILE
    if not path.exists():
        return PRIOR
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict) or "prior" not in data:
        raise ConfigError(f"{path}: expected an object with a 'prior' number")
    return check_prior(data["prior"], str(path))


def foldin_kind(model: Model) -> str | None:
    """``"vector"``, ``"history"`` or None (the model cannot use recorded interactions)."""
    if model.foldin_tables:
        return "vector"
    if model.can_score_histories():
        return "history"
    return None


def _swaps(model: Model) -> bool:
    """Whether folding in through ``model`` swaps user tables inside a module (the gradient
    fold-in and ``score_vectors`` of ``Model``, through ``torch.func.functional_call``): the
    model itself or an ensemble's member."""
    return any(isinstance(m, Model) and m.foldin_tables and (type(m).fold_in is Model.fold_in
                                                            or type(m).score_vectors is Model.score_vectors)
               for m in model.modules())


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
        self.model = copy.deepcopy(model) if self.kind is not None and not self.ncf and _swaps(model) else model
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
        # a Newton fold-in (MF) takes the service's prior; the gradient one (BPR) keeps its own
        newton = {"prior": self.prior, "negatives": self.negatives} if hasattr(self.model, "linear_terms") else {}
        v = self.model.fold_in([self.history(state)], init=init, steps=self.steps, max_history=self.max_history,
                               **newton)
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
                scores = self.model.score_histories([self.history(state)], users=[state.index])
                return None, scores[0].double().cpu().numpy()
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
