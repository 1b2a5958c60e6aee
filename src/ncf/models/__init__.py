"""Model registry: a plain dict from name to class (no discovery)."""

from __future__ import annotations

from ncf.models.base import Model, Scorer
from ncf.models.gmf import GMF
from ncf.models.mlp import MLP
from ncf.models.neumf import NeuMF

MODELS: dict[str, type[Model]] = {
    "gmf": GMF,
    "mlp": MLP,
    "neumf": NeuMF,
}


def get_model_class(name: str) -> type[Model]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})") from None


__all__ = ["MODELS", "Model", "Scorer", "GMF", "MLP", "NeuMF", "get_model_class"]
