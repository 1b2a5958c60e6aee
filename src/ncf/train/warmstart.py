"""Warm starts: initialise a GMF's or NeuMF's item embeddings from another run's item
vectors (an item2vec run, typically), matched by RAW item id.

Tables filled: GMF's ``item_emb``; NeuMF's GMF part, and its MLP part too where that
table has the same width. Every table whose width differs is left alone; if none matches
the vectors' width, that is an error naming both sizes. Items of the new dataset that the
source run has no vector for (unknown there, or below its ``min_count``: zero rows) keep
their random initialisation and are counted.

Scale: the vectors are copied as they are. On ml-100k (32 dimensions) item2vec rows have norms
of about 2 (0.8 to 3.9), close to the 2.7 that GMF's item rows reach by training, against 0.06
for the random init (std 0.01). Rescaling them to the random init's norm was tried on ml-100k
and made the warm start indistinguishable from a random one (see docs/RESULTS.md);
``rescale=True`` keeps that option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncf.data.interactions import IdMap
from ncf.errors import ConfigError


def item_tables(model) -> dict[str, nn.Embedding]:
    """The item embedding tables a warm start may fill, by name."""
    from ncf.models.gmf import GMF
    from ncf.models.neumf import NeuMF

    if isinstance(model, NeuMF):
        return {"gmf.item_emb": model.gmf.item_emb, "mlp.item_emb": model.mlp.tower.item_emb}
    if isinstance(model, GMF):
        return {"item_emb": model.item_emb}
    raise ConfigError(f"--init-items applies to gmf and neumf, not {model.name!r}")


def source_vectors(source: Path) -> tuple[np.ndarray, IdMap, str]:
    """[n_items, d] float32 item vectors of run ``source``, its item id map and model name."""
    from ncf.checkpoint import load_model, load_run_maps

    source = Path(source)
    model = load_model(source)
    emb = model.item_embeddings()
    if emb is None:
        raise ConfigError(f"--init-items {source}: model {model.name!r} has no item embeddings")
    _, items = load_run_maps(source)
    if len(items) != emb.shape[0]:
        raise ConfigError(f"--init-items {source}: idmap.json has {len(items)} items, the weights {emb.shape[0]}")
    return emb.float().cpu().numpy(), items, model.name


@torch.no_grad()
def init_item_embeddings(model, item_map: IdMap, source: Path, rescale: bool = False) -> dict[str, Any]:
    """Fill ``model``'s item tables from run ``source``; returns a report of what was copied.

    ``rescale=True`` scales them to the mean row norm of the random init (see the module doc)."""
    tables = item_tables(model)
    vectors, src_items, src_model = source_vectors(source)
    d = vectors.shape[1]
    chosen = {name: t for name, t in tables.items() if t.embedding_dim == d}
    if not chosen:
        widths = ", ".join(f"{n} {t.embedding_dim}" for n, t in tables.items())
        raise ConfigError(f"--init-items {source}: its vectors have {d} dimensions, the {model.name} item "
                         f"embeddings have {widths} (train with --factors {d}, or item2vec with "
                         f"--param vector_size=<factors>)")
    norms = np.linalg.norm(vectors, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    src_index = np.array([-1 if (j := src_items.get(raw)) is None else j for raw in item_map.raw_ids], np.int64)
    hit = src_index >= 0
    hit[hit] = usable[src_index[hit]]
    n_hit = int(hit.sum())
    if n_hit == 0:
        raise ConfigError(f"--init-items {source}: none of this dataset's {len(item_map)} items has a vector "
                         f"there (different datasets or id spaces?)")
    targets = np.flatnonzero(hit)
    v = vectors[src_index[targets]]
    report: dict[str, Any] = {"source": str(source), "source_model": src_model, "dimensions": d,
                              "tables": list(chosen), "initialised": n_hit,
                              "random": len(item_map) - n_hit,
                              "not_in_source": int((src_index < 0).sum()),
                              "no_vector_in_source": int(len(item_map) - n_hit - (src_index < 0).sum())}
    for name, table in chosen.items():
        w = table.weight
        scale = float(w.norm(dim=1).mean()) / float(np.linalg.norm(v, axis=1).mean()) if rescale else 1.0
        w[torch.as_tensor(targets, device=w.device)] = torch.as_tensor(v * scale, dtype=w.dtype, device=w.device)
        report.setdefault("scale", {})[name] = scale
    return report
