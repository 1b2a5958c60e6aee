"""``ncf tune``: Optuna search over the model registry on the validation holdout
(:mod:`ncf.tune.search`), its search spaces (:mod:`ncf.tune.space`) and reports
(:mod:`ncf.tune.report`). Optuna is imported only when a search runs (``pip install 'ncf[tune]'``)."""

from ncf.tune.search import DEFAULT_MODELS, Tuner, tune

__all__ = ["DEFAULT_MODELS", "Tuner", "tune"]
