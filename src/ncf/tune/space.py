"""Search spaces of ``ncf tune`` and ``ncf compare``: one Optuna define-by-run function per model.

Each space maps an ``optuna.Trial`` to a trial dict in the form :func:`ncf.compare.trial_config`
takes (model hyperparameters and TrainConfig fields by name). ``DEFAULTS`` is each model's first
trial (enqueued before TPE takes over): for ``ials`` Rendle et al.'s recipe (RecSys 2022: a large
dimension, a small unobserved weight, the frequency-scaled regulariser ν = 1) at the values that
fit it on ncf-ml-1m's validation holdout (256, 0.2, 0.007: 0.600 validation NDCG@10, where their
192 and 0.3 without the scaling, through ``implicit``, reached 0.586); for ``mf`` Rendle et al.'s
(RecSys 2020) dimension 192 and 8 negatives with the Adam step and L2 that fit them at this batch
(lr 0.0008, L2 1.3e-4: the best MF of a 3000 s ``ncf tune`` of ncf-ml-1m, chosen on validation:
0.589 validation NDCG@10 after 20 epochs, where their SGD setting, L2 0.005 at lr 0.005, reached
0.574); for ``gfcf`` and ``bspm`` the published Gowalla settings (Shen et al. 2021: alpha 0.3,
256 singular vectors; Choi et al. 2023: the reference code's Gowalla command); for the others the
defaults ``ncf compare`` always tried first. The ``ials`` ranges reach down to the small
unobserved weight and regularisation that Gowalla's validation split chose (0.01, 0.003).

SGD models train at most ``epochs`` epochs (early stopping on validation, patience 3) at a fixed
batch size: what is searched is what moved validation most in issues 3-5 (size, L2, learning
rate, negatives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ncf.errors import ConfigError

# batch of the SGD trials: large enough for speed on 2 cores, small enough to converge in a few epochs
SGD_BATCH = 16384


def _pop(trial) -> dict[str, Any]:
    return {}


def _itemknn(trial) -> dict[str, Any]:
    return {"k": trial.suggest_int("k", 10, 1000, log=True), "shrink": trial.suggest_float("shrink", 0.0, 200.0)}


def _ease(trial) -> dict[str, Any]:
    return {"l2": trial.suggest_float("l2", 10.0, 20000.0, log=True)}


def _gfcf(trial) -> dict[str, Any]:
    return {"alpha": trial.suggest_float("alpha", 0.0, 1.0),
            "factors": trial.suggest_categorical("factors", [64, 128, 256, 448])}


def _bspm(trial) -> dict[str, Any]:
    return {"factors": trial.suggest_categorical("factors", [128, 256, 448]),
            "ideal_weight": trial.suggest_float("ideal_weight", 0.0, 0.6),
            "sharpen_time": trial.suggest_float("sharpen_time", 0.5, 4.0),
            "sharpen_solver": trial.suggest_categorical("sharpen_solver", ["euler", "rk4"]),
            "blur_time": trial.suggest_float("blur_time", 0.5, 2.0)}


def _ials(trial) -> dict[str, Any]:
    out = {
        "factors": trial.suggest_categorical("factors", [32, 64, 128, 192, 256, 384]),
        "unobserved_weight": trial.suggest_float("unobserved_weight", 0.003, 2.0, log=True),
        "iterations": trial.suggest_int("iterations", 8, 20),
        "frequency_scaling": trial.suggest_categorical("frequency_scaling", [0.0, 1.0]),
    }
    # the two regularisers live on different scales: one parameter each, so TPE does not mix them
    if out["frequency_scaling"]:
        out["regularization"] = trial.suggest_float("scaled_regularization", 1e-4, 0.1, log=True)
    else:
        out["regularization"] = trial.suggest_float("regularization", 0.1, 100.0, log=True)
    return out


def _sgd(trial, factors: list[int] | None = None, l2_low: float = 1e-6, l2_high: float = 1e-2) -> dict[str, Any]:
    out: dict[str, Any] = {
        "lr": trial.suggest_float("lr", 5e-4, 2e-2, log=True),
        "neg": trial.suggest_categorical("neg", [4, 8, 16]),
        "batch_size": SGD_BATCH,
    }
    if factors:
        out["factors"] = trial.suggest_categorical("factors", factors)
    if l2_high:
        out["l2"] = trial.suggest_float("l2", l2_low, l2_high, log=True)
    return out


def _mf(trial) -> dict[str, Any]:
    return _sgd(trial, [32, 64, 128, 192], 1e-5, 1e-2)


def _bpr(trial) -> dict[str, Any]:
    return _sgd(trial, [16, 32, 64, 128], 1e-6, 1e-3)


def _gmf(trial) -> dict[str, Any]:
    return _sgd(trial, [8, 16, 32, 64], 1e-6, 1e-3)


def _mlp(trial) -> dict[str, Any]:
    out = _sgd(trial, None, 0, 0)
    out["layers"] = [int(x) for x in trial.suggest_categorical("layers", ["64,32,16,8", "128,64,32,16",
                                                                         "256,128,64"]).split(",")]
    out["dropout"] = trial.suggest_float("dropout", 0.0, 0.4)
    return out


def _neumf(trial) -> dict[str, Any]:
    out = _mlp(trial)
    out["factors"] = trial.suggest_categorical("factors", [8, 16, 32, 64])
    return out


def _lightgcn(trial) -> dict[str, Any]:
    """LightGCN's own loop (not the SGD batch above): one graph propagation a batch, so larger
    batches are what make an epoch cheap on a CPU (a Gowalla epoch is ~8x faster at 16384 than at
    the paper's 2048); ``epochs`` is the most it trains, early stopping on validation recall@20."""
    return {
        "factors": trial.suggest_categorical("factors", [32, 64, 128]),
        "layers": trial.suggest_int("layers", 1, 4),
        "lr": trial.suggest_float("lr", 5e-4, 2e-2, log=True),
        "l2": trial.suggest_float("l2", 1e-6, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [2048, 8192, 16384]),
        "epochs": trial.suggest_int("epochs", 20, 1000, log=True),
    }


SPACES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "pop": _pop, "itemknn": _itemknn, "ease": _ease, "gfcf": _gfcf, "bspm": _bspm, "ials": _ials,
    "mf": _mf, "bpr": _bpr, "gmf": _gmf, "mlp": _mlp, "neumf": _neumf, "lightgcn": _lightgcn,
}

# first trial of each model, in the space's own parameter names (optuna.Study.enqueue_trial)
DEFAULTS: dict[str, dict[str, Any]] = {
    "pop": {},
    "itemknn": {"k": 100, "shrink": 10.0},
    "ease": {"l2": 500.0},
    "gfcf": {"alpha": 0.3, "factors": 256},
    "bspm": {"factors": 448, "ideal_weight": 0.2, "sharpen_time": 2.5, "sharpen_solver": "rk4", "blur_time": 1.0},
    "ials": {"factors": 256, "unobserved_weight": 0.2, "frequency_scaling": 1.0, "scaled_regularization": 0.007,
             "iterations": 12},
    "mf": {"factors": 192, "neg": 8, "l2": 0.00013, "lr": 0.0008},
    "bpr": {"factors": 32, "neg": 4, "l2": 1e-5, "lr": 0.005},
    "gmf": {"factors": 16, "neg": 4, "l2": 1e-6, "lr": 0.005},
    "mlp": {"layers": "64,32,16,8", "neg": 4, "lr": 0.005, "dropout": 0.1},
    "neumf": {"factors": 16, "layers": "64,32,16,8", "neg": 4, "lr": 0.005, "dropout": 0.1},
    # the paper's settings (He et al., SIGIR 2020, and their code: 1000 epochs at most)
    "lightgcn": {"factors": 64, "layers": 3, "lr": 0.001, "l2": 1e-4, "batch_size": 2048, "epochs": 1000},
}

# further early trials, enqueued after DEFAULTS: where one model's reference settings differ by data.
# ials: the model's own defaults, the values a Gowalla validation split chose (unobserved weight
# 0.01, scaled L2 0.003: validation Recall@20 0.204, where the ncf-ml-1m first trial reaches 0.025)
ALSO_FIRST: dict[str, list[dict[str, Any]]] = {
    "ials": [{"factors": 256, "unobserved_weight": 0.01, "frequency_scaling": 1.0, "scaled_regularization": 0.003,
              "iterations": 15}],
}

# rough cost order: cheap models first, so a small budget still sees a strong model; a model with a
# space but not named here comes after these, in the order it was asked for (:func:`ordered`)
ORDER = ("pop", "gfcf", "ease", "ials", "bspm", "itemknn", "mf", "bpr", "gmf", "neumf", "mlp", "lightgcn")

# relative cost of a fitted model's trial from its hyperparameters (the model's full parameter
# dict, defaults filled in): ``ncf tune`` scales the seconds of its earlier trials by it to
# decide whether a drawn setting can finish in the time left (one-shot fits cannot be stopped).
# Models absent here cost alike whatever their settings. iALS: a sweep is linear in the
# interactions times the dimension and cubic in it for the Gram matrices; on ML-1M sizes the
# factors**1.5 fits between those.
COST: dict[str, Callable[[dict[str, Any]], float]] = {
    "ials": lambda p: float(p["iterations"]) * float(p["factors"]) ** 1.5,
}


def ordered(names) -> list[str]:
    """``names`` in search order: ``ORDER``'s first, then any other (a model whose space was
    added without a place in ``ORDER``) in the order given; duplicates once."""
    names = list(dict.fromkeys(names))
    return [m for m in ORDER if m in names] + [m for m in names if m not in ORDER]


def cost(name: str, params: dict[str, Any]) -> float:
    """Relative cost of a trial of ``name`` with model hyperparameters ``params`` (``COST``; 1 for
    models without a cost function), at least a tiny positive number."""
    fn = COST.get(name)
    return max(float(fn(params)), 1e-12) if fn else 1.0


def suggest(name: str, trial) -> dict[str, Any]:
    """The trial dict (for :func:`ncf.compare.trial_config`) of ``name`` drawn by ``trial``."""
    try:
        space = SPACES[name]
    except KeyError:
        raise ConfigError(f"no search space for model {name!r} (tunable: {', '.join(sorted(SPACES))})") from None
    return space(trial)


class Proposals:
    """``budget`` trial dicts of ``name`` drawn one at a time by an in-memory, seeded TPE study
    (the default first); ``tell(value)`` after each (``None`` / NaN: the trial failed). What
    ``ncf compare`` iterates over instead of its random grid."""

    def __init__(self, name: str, budget: int, seed: int = 0):
        import optuna

        if budget < 1:
            raise ConfigError(f"--tune-budget must be >= 1, got {budget}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.name, self.budget = name, budget
        self.study = optuna.create_study(direction="maximize",
                                         sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
        if name in DEFAULTS:
            self.study.enqueue_trial(DEFAULTS[name])
        self._trial = None

    def __len__(self) -> int:
        return self.budget if self.name != "pop" else 1  # nothing to search

    def __iter__(self):
        for _ in range(len(self)):
            self._trial = self.study.ask()
            yield suggest(self.name, self._trial)

    def tell(self, value) -> None:
        import math

        import optuna

        if value is None or not math.isfinite(value):
            self.study.tell(self._trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(self._trial, float(value))
