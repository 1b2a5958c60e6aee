"""``ensemble``: a weighted blend of other models' normalised scores, weights chosen on validation.

score(u, ·) = Σ_k w_k z_k(u, ·), where z_k is member k's ``score_all`` row standardised over the
whole catalogue (mean 0, standard deviation 1 per user), so that logits, counts and
similarities blend on one scale. The weights lie on a grid of the simplex (``step``; 0.1 gives
66 settings for three members) and the setting with the best validation ``metric`` under
``select`` (sampled: the 1 + 99 candidates; full: every item unseen in training) is kept; test
is never looked at.

``members`` names run directories (their weights are copied in: the runs must have the same
ids and training interactions as the dataset) or registry names of fitted models (fitted here
with their defaults). Once fitted, ``model_params`` holds each member's model name and
hyperparameters and the state dict holds their weights (``members.K.*``), so the run directory
loads, evaluates and serves without the member runs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import check_memory, pairs_from_rows
from ncf.models.baselines import FittedModel

NORMALISE = ("zscore",)
SELECT = ("sampled", "full")


def simplex_grid(k: int, step: float) -> np.ndarray:
    """``[n, k]`` weight vectors with entries in multiples of ``step`` summing to 1."""
    n = round(1 / step)
    if abs(n * step - 1) > 1e-9 or n < 1:
        raise ConfigError(f"ensemble: step must divide 1 (0.1, 0.05, 0.25, ...), got {step!r}")
    rows = [c for c in itertools.product(range(n + 1), repeat=k - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in rows], dtype=np.float64) / n


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """Each row standardised: ``[B, I]`` -> ``[B, I]`` (a constant row becomes 0)."""
    scores = scores.float()
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True, unbiased=False)
    return (scores - mean) / torch.where(std > 0, std, torch.ones_like(std))


def _spec(member: Any, n_users: int, n_items: int) -> dict[str, Any]:
    """A member as ``{"model", "model_params", "source"}`` from a run directory, a registry name
    or an existing spec."""
    from ncf.models import MODELS, get_model_class

    if isinstance(member, dict):
        if "model" not in member:
            raise ConfigError(f"ensemble: member {member!r} lacks 'model'")
        return {"model": member["model"], "model_params": dict(member.get("model_params", {})),
                "source": member.get("source", member["model"])}
    member = str(member)
    cfg_path = Path(member) / "config.json"
    if cfg_path.exists():
        import json

        cfg = json.loads(cfg_path.read_text())
        if (cfg.get("n_users"), cfg.get("n_items")) != (n_users, n_items):
            raise ConfigError(f"ensemble: {member} is a model of {cfg.get('n_users')} users x {cfg.get('n_items')} "
                             f"items, not {n_users} x {n_items}")
        return {"model": cfg["model"], "model_params": cfg.get("model_params", {}), "source": member}
    if member in MODELS:
        if get_model_class(member).trainable:
            raise ConfigError(f"ensemble: {member!r} is trained by SGD; train it first and name its run directory")
        return {"model": member, "model_params": {}, "source": member}
    raise ConfigError(f"ensemble: member {member!r} is neither a run directory nor a fitted model's name")


class Ensemble(FittedModel):
    name = "ensemble"
    params: ClassVar[dict] = {"members": ["itemknn", "pop"], "weights": [], "normalise": "zscore",
                              "select": "sampled", "metric": "ndcg@10", "step": 0.1}

    def __init__(self, n_users: int, n_items: int, members=("itemknn", "pop"), weights=(), normalise: str = "zscore",
                 select: str = "sampled", metric: str = "ndcg@10", step: float = 0.1):
        super().__init__(n_users, n_items)
        from ncf.models import get_model_class

        specs = [_spec(m, n_users, n_items) for m in members]
        if not specs:
            raise ConfigError("ensemble: needs at least one member")
        if any(s["model"] == "ensemble" for s in specs):
            raise ConfigError("ensemble: members cannot be ensembles themselves")
        if weights and len(weights) != len(specs):
            raise ConfigError(f"ensemble: {len(weights)} weights for {len(specs)} members")
        if normalise not in NORMALISE:
            raise ConfigError(f"ensemble: normalise must be one of {', '.join(NORMALISE)}, got {normalise!r}")
        if select not in SELECT:
            raise ConfigError(f"ensemble: select must be sampled or full, got {select!r}")
        simplex_grid(1, step)
        self.members = nn.ModuleList(
            get_model_class(s["model"]).from_params(n_users, n_items, **s["model_params"]) for s in specs)
        w = [float(x) for x in weights] or [1.0 / len(specs)] * len(specs)
        self._hparams = {"members": specs, "weights": w, "normalise": normalise, "select": select,
                         "metric": metric, "step": float(step)}
        self.selection: dict[str, Any] | None = None

    @property
    def weights(self) -> list[float]:
        return list(self._hparams["weights"])

    def fit(self, dataset, cfg=None) -> Ensemble:
        from ncf.checkpoint import load_model, load_run_maps, load_train_matrix

        for spec, member in zip(self._hparams["members"], self.members, strict=True):
            src = Path(spec["source"])
            if (src / "config.json").exists():
                users, items = load_run_maps(src)
                if users != dataset.train.user_map or items != dataset.train.item_map:
                    raise ConfigError(f"ensemble: {src} has other user/item ids than this dataset")
                if (load_train_matrix(src) != dataset.train.matrix).nnz:
                    raise ConfigError(f"ensemble: {src} was trained on other interactions than this training set")
                member.load_state_dict(load_model(src).state_dict())
            else:
                member.fit(dataset, cfg)
        if dataset.valid is not None and len(dataset.valid) and len(self.members) > 1:
            self._choose_weights(dataset)
        return self

    @torch.no_grad()
    def _member_scores(self, users: np.ndarray, batch: int = 1024) -> list[np.ndarray]:
        """Each member's standardised ``[len(users), n_items]`` scores (float32)."""
        dev = next(self.parameters()).device
        out = [np.empty((len(users), self.n_items), dtype=np.float32) for _ in self.members]
        for s in range(0, len(users), batch):
            u = torch.as_tensor(users[s: s + batch], device=dev)
            for k, m in enumerate(self.members):
                out[k][s: s + batch] = zscore(m.score_all(u)).cpu().numpy()
        return out

    def _choose_weights(self, dataset) -> None:
        from ncf.data.split import PAD
        from ncf.eval.metrics import pessimistic_rank, summarize

        hp, valid = self._hparams, dataset.valid
        # every member's scores of every validation row, held at once: refused before allocating where
        # they cannot fit (a split with many validation rows a user over a large catalogue)
        check_memory("ensemble", 4 * len(valid) * self.n_items * (len(self.members) + 2),
                     f"its weights are chosen on {len(valid)} validation rows x {self.n_items} items")
        z = self._member_scores(np.asarray(valid.users))
        rows = np.arange(len(valid))
        if hp["select"] == "sampled":
            cand = valid.candidates
            items = np.where(cand == PAD, 0, cand)
            parts = [zk[rows[:, None], items] for zk in z]  # [n, 1 + C]
            mask = cand[:, 1:] != PAD
        else:
            seen = dataset.train.matrix.tocsr()[np.asarray(valid.users)]
            parts = z
        grid = simplex_grid(len(z), hp["step"])
        scores = []
        for w in grid:
            blend = sum(float(wk) * p for wk, p in zip(w, parts, strict=True))
            if hp["select"] == "sampled":
                ranks = pessimistic_rank(blend[:, 0], blend[:, 1:], mask)
            else:
                blend = np.array(blend, copy=True)
                pos = blend[rows, valid.items].copy()
                blend[seen.nonzero()] = -np.inf
                blend[rows, valid.items] = -np.inf
                ranks = (blend >= pos[:, None]).sum(axis=1)
            scores.append(summarize(ranks, (10,), full=hp["select"] == "full")[hp["metric"]])
        best = int(np.argmax(scores))  # ties: the first setting on the grid
        hp["weights"] = [round(float(x), 6) for x in grid[best]]
        singles = [scores[int(np.flatnonzero(np.isclose(grid[:, k], 1.0))[0])] for k in range(len(z))]
        self.selection = {"valid": scores[best], "members_alone": singles, "settings": len(grid)}

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        out = None
        for w, m in zip(self.weights, self.members, strict=True):
            if w == 0:
                continue
            part = w * zscore(m.score_all(users))
            out = part if out is None else out + part
        return out if out is not None else torch.zeros(len(users), self.n_items, device=users.device)

    def can_score_histories(self) -> bool:
        return all(m.can_score_histories() for w, m in zip(self.weights, self.members, strict=True) if w)

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        """[B, n_items]: users known by their item histories (fold-in, issue 18), blended as
        ``score_all`` blends: Σ w_k z(member_k.score_histories(histories)), each member's rows
        standardised over the catalogue. ``users`` (the model's index of each history's user,
        or None) goes to the members: those with user tables start a known user's fold-in from
        the trained row."""
        dev = next(self.parameters(), torch.empty(0)).device
        out = None
        for w, m in zip(self.weights, self.members, strict=True):
            if w == 0:
                continue
            if not m.can_score_histories():
                raise NotImplementedError(f"ensemble member {m.name!r} cannot score users by their histories")
            part = w * zscore(m.score_histories(histories, users=users))
            out = part if out is None else out + part
        return out if out is not None else torch.zeros(len(histories), self.n_items, device=dev)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs through ``score_all`` of the distinct users (the
        standardisation needs each user's whole row)."""
        return pairs_from_rows(self, users, items)
