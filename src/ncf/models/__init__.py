"""Model registry: a plain dict from name to "module:Class" (no discovery).

Classes are imported on first use, so that optional dependencies (gensim, implicit) are
imported only by the models that need them.
"""

from __future__ import annotations

import importlib

from ncf.errors import ConfigError
from ncf.models.base import Model, Scorer
from ncf.models.gmf import GMF
from ncf.models.mlp import MLP
from ncf.models.neumf import NeuMF

MODELS: dict[str, str] = {
    "gmf": "ncf.models.gmf:GMF",
    "mlp": "ncf.models.mlp:MLP",
    "neumf": "ncf.models.neumf:NeuMF",
    "pop": "ncf.models.baselines:Popularity",
    "itemknn": "ncf.models.baselines:ItemKNN",
    "ease": "ncf.models.baselines:EASE",
    "gfcf": "ncf.models.graphfilter:GFCF",
    "bspm": "ncf.models.graphfilter:BSPM",
    "bpr": "ncf.models.baselines:BPRMF",
    "mf": "ncf.models.mf:MF",
    "ials": "ncf.models.ials:ImplicitALS",
    "item2vec": "ncf.models.item2vec:Item2Vec",
    "widedeep": "ncf.models.widedeep:WideDeep",
    "sasrec": "ncf.models.sasrec:SASRec",
    "gru4rec": "ncf.models.gru4rec:GRU4Rec",
    "ensemble": "ncf.models.ensemble:Ensemble",
    "lightgcn": "ncf.models.lightgcn:LightGCN",
}


def get_model_class(name: str) -> type[Model]:
    try:
        path = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})") from None
    module, cls = path.split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ConfigError(f"model {name!r} needs an optional dependency: {e} (pip install 'ncf[all]')") from None


__all__ = ["MODELS", "Model", "Scorer", "GMF", "MLP", "NeuMF", "get_model_class"]
