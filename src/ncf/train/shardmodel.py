"""The sharded model: GMF / MLP / NeuMF with their tables in a TorchRec EmbeddingBagCollection.

The model's embedding tables of one side are concatenated by columns into one TorchRec table
(``user``: GMF's then the MLP's user embeddings; ``item`` likewise), one id a bag with sum
pooling (a plain lookup); the tower and output layers are the model class's own modules
(built with 1-row tables, then removed) and :func:`logits_from` repeats each model's
``forward`` on the looked-up vectors. Used by :mod:`ncf.train.sharded`.
"""

from __future__ import annotations

import torch
from torch import nn

from ncf.config import TrainConfig
from ncf.errors import ConfigError
from ncf.models import Model, get_model_class
from ncf.train.sharded_hint import INSTALL

try:
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.modules.embedding_configs import PoolingType
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ConfigError(f"{INSTALL} ({e})") from None

SHARDABLE = ("gmf", "mlp", "neumf")
SIDES = ("user", "item")
FEATURES = {"user": "users", "item": "items"}
INIT_STD = 0.01  # the models' embedding init: normal(0, 0.01)
INIT_BLOCK = 1 << 16


def table_parts(model: Model) -> dict[str, list[tuple[str, int]]]:
    """``{"user": [(state key, dim), ...], "item": [...]}``: the model's embedding tables by
    side, in the column order of the sharded tables."""
    parts: dict[str, list[tuple[str, int]]] = {s: [] for s in SIDES}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            side = name.rsplit(".", 1)[-1].split("_")[0]
            if side not in parts:
                raise ConfigError(f"{model.name}: embedding {name} is neither a user nor an item table")
            parts[side].append((f"{name}.weight", mod.embedding_dim))
    return parts


def _tower(t, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``Tower.forward`` on looked-up vectors ``u`` [B, h], ``i`` [B, h] -> [B, out]."""
    if not len(t.linears):
        return torch.cat([u, i], dim=-1)
    first, half = t.linears[0], u.shape[1]
    h = torch.addmm(first.bias, u, first.weight[:, :half].T).addmm_(i, first.weight[:, half:].T)
    return t.layers_from(t._relu(h), start=1)


def logits_from(dense: Model, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """The model's logits [B] from its concatenated user [B, Du] and item [B, Di] vectors,
    through its own output layers (the same operations as ``forward``)."""
    if dense.name == "gmf":
        return dense.predict(u * i).squeeze(-1)
    if dense.name == "mlp":
        return dense.predict(_tower(dense.tower, u, i)).squeeze(-1)
    f = dense.hparams()["factors"]
    h = torch.cat([u[:, :f] * i[:, :f], _tower(dense.mlp.tower, u[:, f:], i[:, f:])], dim=-1)
    return dense.predict(h).squeeze(-1)


def init_rows(seed: int, table: int, lo: int, n: int, dim: int) -> torch.Tensor:
    """Rows ``lo:lo+n`` [n, dim] of a table's initial weights, normal(0, 0.01), generated in
    blocks of 65,536 rows seeded by (seed, table, block): the same values whatever the
    sharding, so any shard initialises itself without the rest of the table."""
    out = torch.empty(n, dim)
    for b in range(lo // INIT_BLOCK, (lo + n - 1) // INIT_BLOCK + 1 if n else lo // INIT_BLOCK):
        g = torch.Generator().manual_seed((seed * 1_000_003 + table * 7_919 + b * 104_729 + 99_991) % (2**63 - 1))
        block = torch.randn(INIT_BLOCK, dim, generator=g).mul_(INIT_STD)
        a, z = max(lo, b * INIT_BLOCK), min(lo + n, (b + 1) * INIT_BLOCK)
        out[a - lo: z - lo] = block[a - b * INIT_BLOCK: z - b * INIT_BLOCK]
    return out


class ShardedNCF(nn.Module):
    """``forward(users, items) -> (logits [B], squared norm of the looked-up vectors)``: the
    tables in an EmbeddingBagCollection (sharded once wrapped in DistributedModelParallel),
    ``dense`` the model less its tables."""

    def __init__(self, dense: Model, n_users: int, n_items: int, dims: dict[str, int]):
        super().__init__()
        rows = {"user": n_users, "item": n_items}
        self.tables = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=s, embedding_dim=dims[s], num_embeddings=rows[s], feature_names=[FEATURES[s]],
                               pooling=PoolingType.SUM) for s in SIDES], device=torch.device("meta"))
        self.dense = dense

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(users)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=[FEATURES[s] for s in SIDES],
                                                  values=torch.cat([users, items]),
                                                  lengths=torch.ones(2 * b, dtype=torch.int32, device=users.device))
        emb = self.tables(kjt).to_dict()
        u, i = emb[FEATURES["user"]], emb[FEATURES["item"]]
        return logits_from(self.dense, u, i), u.pow(2).sum() + i.pow(2).sum()


def dense_model(cfg: TrainConfig, skeleton: Model) -> Model:
    """The model with 1-row tables, seeded like an ordinary run, its tables then removed: the
    tower and output layers, data-parallel."""
    torch.manual_seed(cfg.seed)
    dense = get_model_class(skeleton.name).from_params(1, 1, **skeleton.hparams())
    for name, mod in list(dense.named_modules()):
        if isinstance(mod, nn.Embedding):
            parent, _, attr = name.rpartition(".")
            setattr(dense.get_submodule(parent) if parent else dense, attr, None)
    return dense
