"""Neural collaborative filtering for implicit feedback.

The front door (see :mod:`ncf.api`)::

    import ncf
    data = ncf.load_dataset("ml-100k")
    model = ncf.fit("neumf", data, epochs=20, factors=8)
    model.recommend([1, 2, 3], k=10)
    ncf.evaluate(model, data, protocol="full")

Names are imported on first use, so ``import ncf`` stays light (no torch until needed).
"""

import os as _os

# OpenMP threads that spin while they wait for each other cost 20-60x the work on a machine
# whose cores are shared (measured in docs/RESULTS.md, "Training speed"); sleeping waits cost
# little at the batch sizes used here. Only takes effect if torch is not imported yet, and
# never overrides a value the user set.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0"

_API = {
    "load_dataset": "ncf.api", "from_pandas": "ncf.api", "fit": "ncf.api", "load": "ncf.api",
    "evaluate": "ncf.api", "FittedModel": "ncf.api",
    "Recommender": "ncf.recommend", "Dataset": "ncf.data.split", "TrainConfig": "ncf.config",
    "MODELS": "ncf.models",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ncf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
