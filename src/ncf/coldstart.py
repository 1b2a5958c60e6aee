"""Cold-start users: hold a set of users out of training entirely, then recommend to them
from their side features alone and compare with popularity baselines.

Protocol (:func:`cold_split`): a ``fraction`` of the users that have a test item is drawn
(seeded); *all* their interactions leave the training data (their rows stay, empty, so the
indexes and feature tables are those of the full dataset). Each cold user is then evaluated
on their usual test item: ``sampled`` (among its 1 + 99 candidates) and ``full`` (among
every item except the user's other interactions: those are positives we hold, not
competitors, as in the warm protocol). Warm users keep the standard split.

Scorers for a cold user: :class:`FeatureScorer` (a model with ``score_all_features``, i.e.
``widedeep``: the learned "unknown user" row plus the user's features), :class:`ncf.models.baselines.Popularity`
(training counts), :class:`SegmentPopular` (item popularity among warm users sharing each
of the user's feature values, averaged over fields) and :class:`PriorBlend` (the feature
model's standardised scores blended with standardised log popularity, the blend weight chosen
per protocol on the cold users' *validation* items, issue 17).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ncf.data.interactions import Interactions
from ncf.data.split import Dataset, HoldOut
from ncf.errors import ConfigError
from ncf.models.baselines import Popularity


def _keep(h: HoldOut | None, mask_users: np.ndarray, keep_cold: bool) -> HoldOut | None:
    if h is None:
        return None
    sel = np.isin(h.users, mask_users) == keep_cold
    return HoldOut(h.users[sel], h.items[sel], h.candidates[sel])


def cold_split(dataset: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, HoldOut]:
    """(warm dataset without any interaction of the cold users, the cold users' test holdout)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"cold-user fraction must be in (0, 1), got {fraction}")
    candidates = np.unique(dataset.test.users)
    n_cold = int(round(fraction * len(candidates)))
    if n_cold < 1 or n_cold >= len(candidates):
        raise ConfigError(f"a fraction of {fraction} of {len(candidates)} test users leaves no cold or no warm users")
    cold = np.sort(np.random.default_rng(seed).choice(candidates, n_cold, replace=False))
    tr = dataset.train
    users, items = tr.coo()
    keep = ~np.isin(users, cold)
    train = Interactions.from_indices(
        users[keep], items[keep], tr.user_map, tr.item_map,
        None if tr.timestamps is None else tr.timestamps[keep],
        None if tr.ratings is None else tr.ratings[keep], meta=tr.meta)
    report = {**dataset.report, "cold_start": {"cold_users": int(n_cold), "fraction": fraction, "seed": seed,
                                               "interactions_removed": int((~keep).sum())}}
    warm = Dataset(dataset.name, train, _keep(dataset.test, cold, False), _keep(dataset.valid, cold, False),
                   dataset.n_interactions, report, dataset.item_info)
    return warm, _keep(dataset.test, cold, True)


class _Scorer:
    """Scorer contract over fixed tensors (no parameters: the evaluator then works on CPU)."""

    training = False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def parameters(self):
        return iter(())


class SegmentPopular(_Scorer):
    """Score = mean over the user's cat/bucket fields of the item's share of the interactions of
    warm users with the same value (values shared by no warm user contribute plain popularity)."""

    name = "segment-pop"

    def __init__(self, train: sp.csr_matrix, user_codes: list[np.ndarray]):
        self.n_users, self.n_items = train.shape
        self.codes = [torch.as_tensor(c) for c in user_codes if c.ndim == 1]
        pop = np.asarray(train.sum(axis=0)).ravel()
        pop = pop / max(pop.sum(), 1)
        self.tables = []
        for c in self.codes:
            onehot = sp.csr_matrix((np.ones(len(c)), (c.numpy(), np.arange(len(c)))), shape=(int(c.max()) + 1, len(c)))
            counts = np.asarray((onehot @ train).todense(), dtype=np.float64)  # [V, I]
            totals = counts.sum(axis=1, keepdims=True)
            share = np.where(totals > 0, counts / np.maximum(totals, 1), pop[None, :])
            self.tables.append(torch.as_tensor(share, dtype=torch.float32))

    def score_all(self, users):
        users = users.cpu()
        if not self.tables:
            raise ConfigError("segment popularity needs categorical user features")
        return sum(t[c[users]] for t, c in zip(self.tables, self.codes, strict=True)) / len(self.tables)

    def score(self, users, items):
        users, items = users.cpu(), items.cpu()
        return sum(t[c[users], items] for t, c in zip(self.tables, self.codes, strict=True)) / len(self.tables)


class FeatureScorer(_Scorer):
    """A trained model's cold-start scores: users known by their features only (their own
    id embedding is never read)."""

    def __init__(self, model):
        if not hasattr(model, "score_all_features"):
            raise ConfigError(f"model {model.name!r} cannot score users from features (train widedeep)")
        self.model = model
        self.name = f"{model.name} (features)"
        self.n_users, self.n_items = model.n_users, model.n_items

    def parameters(self):
        return self.model.parameters()

    def score(self, users, items):
        return self.model.score_features(self.model.user_features(users), items)

    def score_all(self, users):
        return self.model.score_all_features(self.model.user_features(users), len(users))


def _z(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.float()
    std = scores.std(dim=1, keepdim=True, unbiased=False)
    return (scores - scores.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))


class PriorBlend(_Scorer):
    """``(1 - beta) · z(features scores) + beta · z(log(1 + training count))``, each row
    standardised over the catalogue: a feature model with the popularity head added back.
    ``beta`` 0 is the feature model, 1 ranks as most-popular."""

    def __init__(self, base, prior: Popularity, beta: float):
        if not 0 <= beta <= 1:
            raise ConfigError(f"beta must be in [0, 1], got {beta}")
        self.base, self.beta = base, float(beta)
        self.prior = torch.log1p(prior.counts.detach())[None, :]
        self.name = f"{base.name} + pop prior"
        self.n_users, self.n_items = base.n_users, base.n_items

    def parameters(self):
        return self.base.parameters()

    def score_all(self, users):
        s = _z(self.base.score_all(users)).cpu()
        return (1 - self.beta) * s + self.beta * _z(self.prior).expand(len(users), -1)

    def score(self, users, items):
        uniq, inv = torch.unique(users.cpu(), return_inverse=True)
        return self.score_all(uniq)[inv, items.cpu()]


def choose_beta(base, prior: Popularity, valid: HoldOut, seen: sp.csr_matrix, protocol: str,
                grid: np.ndarray | None = None, metric: str = "ndcg@10") -> tuple[float, list[float]]:
    """The ``beta`` of :class:`PriorBlend` with the best ``metric`` on ``valid`` (the cold users'
    validation items: never trained on, and not their test items) under ``protocol``; ties to
    the smaller beta. Returns (beta, score of every grid value)."""
    from ncf.eval.evaluator import evaluate

    grid = np.linspace(0, 1, 21) if grid is None else grid
    scores = [evaluate(PriorBlend(base, prior, b), valid, protocol, seen=seen)[metric] for b in grid]
    return float(grid[int(np.argmax(scores))]), scores


def evaluate_cold(scorers: list, cold: HoldOut, seen: sp.csr_matrix) -> dict[str, dict[str, Any]]:
    """``{scorer name: {"sampled": metrics, "full": metrics}}`` on the cold users' holdout."""
    from ncf.eval.evaluator import evaluate

    return {s.name: {"sampled": evaluate(s, cold, "sampled"), "full": evaluate(s, cold, "full", seen=seen)}
            for s in scorers}


def run(data_cfg, train_cfg, out: Path, fraction: float = 0.1, seed: int = 0, progress: bool = True,
        overwrite: bool = False) -> dict:
    """Split off cold users, train ``train_cfg.model`` (widedeep) on the warm ones into ``out``,
    evaluate warm and cold users against popularity; writes ``coldstart.json`` and ``coldstart.png``."""
    from ncf.checkpoint import load_model
    from ncf.data.datasets import load_dataset
    from ncf.eval.evaluator import evaluate
    from ncf.train.run import train

    out = Path(out)
    full = load_dataset(data_cfg)
    warm, cold = cold_split(full, fraction, seed)
    summary = train(data_cfg, train_cfg, out, dataset=warm, progress=progress, overwrite=overwrite)
    model = load_model(out)
    (out / "cold_users.json").write_text(json.dumps(full.train.user_map.raws(np.unique(cold.users))))
    pop = Popularity.from_matrix(warm.train.matrix)
    scorers = [FeatureScorer(model), pop]
    if getattr(model, "user_fields", None):
        codes = [b.numpy() for b in model.user_features(torch.arange(model.n_users))]
        if any(c.ndim == 1 for c in codes):
            scorers.append(SegmentPopular(warm.train.matrix, codes))
    # the popularity head blended into the feature scores, its weight chosen per protocol on the
    # cold users' validation items (their test items are never looked at for a choice)
    cold_valid = _keep(full.valid, np.unique(cold.users), True)
    blend, betas = {}, {}
    if cold_valid is not None and len(cold_valid):
        feat = scorers[0]
        for protocol in ("sampled", "full"):
            beta, curve = choose_beta(feat, pop, cold_valid, full.train.matrix, protocol)
            blended = PriorBlend(feat, pop, beta)
            from ncf.eval.evaluator import evaluate as _ev

            blend[protocol] = _ev(blended, cold, protocol, seen=full.seen(include_valid=True))
            betas[protocol] = {"beta": beta, "valid_curve": [round(x, 5) for x in curve]}
    seen_warm = warm.seen(include_valid=True)
    result = {
        "dataset": full.name, "model": model.name, "cold_users": int(len(cold)), "warm_test_users": len(warm.test),
        "fraction": fraction, "seed": seed, "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"], "train_seconds": summary["train_seconds"],
        "warm": {model.name: {"sampled": summary["test"], "full": summary["test_full"]},
                 pop.name: {"sampled": evaluate(pop, warm.test, "sampled"),
                            "full": evaluate(pop, warm.test, "full", seen=seen_warm)}},
        "cold": evaluate_cold(scorers, cold, full.seen(include_valid=True)),
    }
    if blend:
        result["cold"][PriorBlend(scorers[0], pop, 0.0).name] = blend
        result["prior_blend"] = {"chosen_on": "cold users' validation items", **betas}
    (out / "coldstart.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "coldstart.png")
    return result


def plot(result: dict, path: Path) -> None:
    """Bars of HR@10 / NDCG@10 for warm and cold users, sampled and full protocols."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, protocol in zip(axes, ("sampled", "full"), strict=True):
        labels, hr, nd = [], [], []
        for group in ("warm", "cold"):
            for name, m in result[group].items():
                labels.append(f"{group}\n{name}")
                hr.append(m[protocol]["hr@10"])
                nd.append(m[protocol]["ndcg@10"])
        x = np.arange(len(labels))
        ax.bar(x - 0.2, hr, 0.4, label="HR@10")
        ax.bar(x + 0.2, nd, 0.4, label="NDCG@10")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(f"{protocol} protocol")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{result['model']} on {result['dataset']}: warm vs cold users ({result['cold_users']} cold)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
