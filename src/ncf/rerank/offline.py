"""Re-rank a trained run's slates for all users: relevance matrix, solve, accuracy, report.

Relevance: ``sigmoid`` of the scores of models trained with log loss (``bce``: a probability
of interaction); other scorers (baselines, BPR-trained models) give no probability, so
``auto`` refuses them and ``minmax`` (each user's scores rescaled to [0, 1]) must be asked
for explicitly, knowing that "expected revenue" then weighs prices by a rescaled score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ncf.errors import ConfigError
from ncf.recommend import Recommender
from ncf.rerank.attributes import ItemAttributes, load_attributes
from ncf.rerank.constraints import PRICE, Constraint, bind, parse_constraints
from ncf.rerank.lagrangian import RELEVANCE_MODES, SlateProblem, Solution, save_rerank, to_relevance

MISSING = ("exclude", "zero")


def relevance_mode(model, cfg: dict, mode: str = "auto") -> str:
    """Resolve ``auto`` to ``sigmoid`` for models trained by SGD with log loss; refuse otherwise."""
    if mode in RELEVANCE_MODES:
        return mode
    if mode != "auto":
        raise ConfigError(f"unknown relevance mode {mode!r} (known: auto, {', '.join(RELEVANCE_MODES)})")
    loss = (cfg.get("train") or {}).get("loss", "bce")
    if getattr(model, "trainable", False) and loss == "bce":
        return "sigmoid"
    why = "is not trained by SGD" if not getattr(model, "trainable", False) else f"is trained with {loss} loss"
    raise ConfigError(
        f"model {model.name!r} {why}: its scores are not probabilities, so expected revenue is undefined; "
        "pass --relevance minmax to rescale each user's scores to [0, 1] (a ranking score, not a probability)")


def relevance_matrix(rec: Recommender, mode: str, excluded: sp.csr_matrix, batch_users: int = 1024,
                     progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevance [U, I] float32, excluded [U, I] bool) from the recommender's scores
    (``Recommender.scores``, the path every client scores through), in batches of users.

    ``minmax`` rescales over each user's unexcluded items."""
    U, n = rec.model.n_users, rec.model.n_items
    rel = torch.empty((U, n), dtype=torch.float32)
    mask = torch.zeros((U, n), dtype=torch.bool)
    ex = excluded.tocsr()
    for s in range(0, U, batch_users):
        users = torch.arange(s, min(s + batch_users, U))
        scores = torch.from_numpy(rec.scores(users.numpy()))
        sub = ex[s: s + len(users)]
        rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
        m = torch.zeros(scores.shape, dtype=torch.bool)
        m[torch.as_tensor(rows), torch.as_tensor(sub.indices.astype(np.int64))] = True
        if mode == "minmax":
            lo = scores.masked_fill(m, math.inf).min(1, keepdim=True).values
            hi = scores.masked_fill(m, -math.inf).max(1, keepdim=True).values
            span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
            p = ((scores - lo) / span).clamp(0, 1)
        else:
            p = to_relevance(scores, mode)
        rel[s: s + len(users)] = p.float().masked_fill(m, 0.0)
        mask[s: s + len(users)] = m
        if progress:
            progress(min(s + batch_users, U), U)
    return rel, mask


def slate_accuracy(items: np.ndarray, users: np.ndarray, held: np.ndarray) -> dict[str, float]:
    """HR@k and NDCG@k of slates ``items`` [U, k] (-1: empty slot) against one held-out item per
    listed user; k is the slate width."""
    k = items.shape[1]
    if not len(users):
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0}
    hit = items[users] == held[:, None]
    found = hit.any(1)
    pos = hit.argmax(1)
    gain = np.where(found, 1.0 / np.log2(pos + 2.0), 0.0)
    return {f"hr@{k}": float(found.mean()), f"ndcg@{k}": float(gain.mean())}


def slate_metrics(problem: SlateProblem, sol: Solution, attrs: ItemAttributes) -> dict:
    """Revenue (with the ``price`` column, where there is one), mean relevance and coverage."""
    out = {"revenue": None, "mean_relevance": sol.mean_relevance, "coverage": sol.coverage}
    if PRICE in attrs.numeric:
        lin = bind(Constraint("revenue>=0", "revenue", PRICE, ">=", 0.0), attrs)
        items = torch.as_tensor(sol.items)
        valid = items >= 0
        p = problem.P.gather(1, items.clamp(min=0)).double() * valid
        out["revenue"] = float((p * torch.as_tensor(lin.v)[items.clamp(min=0)]).sum()) / problem.n_users
    return out


class RunReranker:
    """A run directory loaded once (model, relevance matrix, dataset) to solve many constraint sets
    (the trade-off benchmark re-uses it)."""

    def __init__(self, directory: str | Path, attributes: str | Path, k: int = 10, relevance: str = "auto",
                 missing: str = "exclude", data_dir: str | None = None, evaluate: bool = True,
                 progress: Callable[[str], None] | None = None):
        from ncf.checkpoint import load_config

        if missing not in MISSING:
            raise ConfigError(f"--missing must be one of {', '.join(MISSING)}, got {missing!r}")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        self.directory = Path(directory)
        self.cfg = load_config(self.directory)
        self.rec = Recommender.from_run(self.directory)  # model, id maps, training interactions
        self.model, self.item_map = self.rec.model, self.rec.item_map
        self.relevance = relevance_mode(self.model, self.cfg, relevance)
        self.attrs = load_attributes(attributes, self.item_map)
        self.k = k
        self.missing = missing
        self.progress = progress
        self.holdout = None
        seen = self.rec.seen
        if evaluate:
            from ncf.data.datasets import DataConfig, load_dataset

            dcfg = dict(self.cfg["data"])
            if data_dir is not None:
                dcfg["data_dir"] = data_dir
            ds = load_dataset(DataConfig(**dcfg))
            if (ds.n_users, ds.n_items) != (self.model.n_users, self.model.n_items):
                raise ConfigError(f"{self.directory}: the dataset now has {ds.n_users} users / {ds.n_items} "
                                 f"items, the model {self.model.n_users} / {self.model.n_items}")
            seen = ds.seen(include_valid=True)
            self.holdout = ds.test
        self._say("scoring all users")
        self.P, self.mask = relevance_matrix(self.rec, self.relevance, seen)
        self.forbidden = ~self.attrs.has if missing == "exclude" else None

    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def problem(self, constraints: list[Constraint]) -> SlateProblem:
        pr = SlateProblem(self.P, self.mask, self.k, self.attrs, constraints, self.forbidden)
        pr.progress = self.progress
        return pr

    def run(self, exprs: list[str], save: bool = False, **solve_kw) -> tuple[dict, Solution]:
        """Solve ``exprs`` and return (the ``--json`` report, the solution)."""
        constraints = parse_constraints(exprs)
        problem = self.problem(constraints)
        sol = problem.solve(**solve_kw)
        report = slate_metrics(problem, sol, self.attrs)
        report["multipliers"] = sol.multipliers
        report["constraints"] = sol.constraint_report()
        if self.holdout is not None:
            report.update(slate_accuracy(sol.items, self.holdout.users, self.holdout.items))
        base = self.baseline()
        report["unconstrained"] = base
        report["k"] = self.k
        report["relevance"] = self.relevance
        report["attributes"] = self.attrs.report(self.item_map)
        report["missing"] = self.missing
        report["solver"] = {"evaluations": sol.evaluations, "sweeps": sol.sweeps,
                            "repaired_users": sol.repaired_users, "messages": sol.messages}
        report["feasible"] = sol.feasible
        if save:
            path = save_rerank(self.directory, sol, self.relevance, self.k, self.attrs,
                               {"missing": self.missing})
            report["saved"] = str(path)
        return report, sol

    def baseline(self) -> dict:
        """Metrics of the unconstrained top-k slates (cached)."""
        if getattr(self, "_baseline", None) is None:
            problem = self.problem([])
            sol = problem.solve()
            base = slate_metrics(problem, sol, self.attrs)
            if self.holdout is not None:
                base.update(slate_accuracy(sol.items, self.holdout.users, self.holdout.items))
            self._baseline = base
        return self._baseline
