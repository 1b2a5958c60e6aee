"""Sparse updates for embedding tables larger than a batch.

A step touches the batch's rows only: the tables' gradients are sparse (``gather(...,
sparse=True)`` in :mod:`ncf.models.kernels`, coalesced: one row per distinct index) and
:class:`RowAdam` updates those rows' moments and weights ("lazy" Adam, as TensorFlow's
LazyAdam and torch's SparseAdam: a row's moments move only when the row is in a batch).
The other parameters keep their dense optimizer; :class:`JointOptimizer` steps both and
saves them as one state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ncf.config import TrainConfig
from ncf.models import Model
from ncf.models.kernels import distinct
from ncf.train.losses import make_optimizer

SPARSE_MIN_ROWS = 100_000  # users + items below which "auto" never picks sparse updates


class RowAdam(torch.optim.Optimizer):
    """Adam on the rows present in a (coalesced) sparse gradient; dense gradients are
    refused. Bias correction counts this parameter's steps, as ``torch.optim.SparseAdam``."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("RowAdam takes sparse gradients (embedding tables with sparse=True)")
                rows, vals = coalesced_rows(p.grad)
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float64)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = float(st["step"])
                m = st["exp_avg"].index_select(0, rows).mul_(b1).add_(vals, alpha=1 - b1)
                v = st["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(vals, vals, value=1 - b2)
                st["exp_avg"].index_copy_(0, rows, m)
                st["exp_avg_sq"].index_copy_(0, rows, v)
                denom = v.div_(1 - b2 ** t).sqrt_().add_(group["eps"])
                # (index_add_ with alpha takes a path several times slower on CPU: scale first)
                p.index_add_(0, rows, m.div_(denom).mul_(-group["lr"] / (1 - b1 ** t)))
        return None


def coalesced_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, values)`` of a sparse row gradient with one entry per distinct row (duplicates
    summed after :func:`ncf.models.kernels.distinct`: a bitmap pass or a sort of the batch,
    whichever costs less for the table's size)."""
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    idx, vals = grad._indices()[0], grad._values()
    rows, inverse = distinct(idx, grad.shape[0])
    return rows, vals.new_zeros((len(rows), *vals.shape[1:])).index_add_(0, inverse, vals)


class JointOptimizer:
    """Several optimizers stepped as one (dense Adam for the layers, SparseAdam for the
    embedding tables), with one ``state_dict`` in the layout of a single optimizer."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        state, groups, offset = {}, [], 0
        for o in self.optimizers:
            sd = o.state_dict()
            state.update({pid + offset: st for pid, st in sd["state"].items()})
            groups += [{**g, "params": [pid + offset for pid in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        groups, offset = list(sd["param_groups"]), 0
        if len(groups) != len(self.param_groups):
            raise ValueError(f"saved optimizer has {len(groups)} parameter groups, this one {len(self.param_groups)}")
        for o in self.optimizers:
            mine, groups = groups[: len(o.param_groups)], groups[len(o.param_groups):]
            n = sum(len(g["params"]) for g in mine)
            o.load_state_dict({
                "state": {pid - offset: st for pid, st in sd["state"].items() if offset <= pid < offset + n},
                "param_groups": [{**g, "params": [pid - offset for pid in g["params"]]} for g in mine],
            })
            offset += n


def use_sparse(model: Model, cfg: TrainConfig, nccl: bool) -> bool:
    """Whether the embedding tables get sparse gradients (see ``TrainConfig.sparse``)."""
    ok = getattr(model, "supports_sparse", False)
    if cfg.sparse == "on" and not ok:
        raise ValueError(f"--sparse on: model {model.name!r} does not support sparse embedding gradients")
    if cfg.sparse == "on" and nccl:
        raise ValueError("--sparse on: NCCL cannot all-reduce sparse gradients; use gloo or --sparse off")
    if cfg.sparse != "auto":
        return cfg.sparse == "on"
    # tables larger than a batch (a dense update would cost more than the batch's rows, and the
    # first layer cannot go table-side, see ncf.models.kernels.use_tables) and large in absolute
    # terms: small datasets keep plain dense Adam whatever the batch
    rows = model.n_users + model.n_items
    return ok and not nccl and rows > cfg.batch_size and rows >= SPARSE_MIN_ROWS


def make_sparse_optimizer(model: Model, cfg: TrainConfig) -> JointOptimizer:
    """Embedding tables with sparse gradients: RowAdam for Adam, plain SGD or Adagrad (both
    take sparse gradients); the rest with ``cfg.optimizer``."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for m in tables:
        m.sparse = True
    table_ids = {id(m.weight) for m in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids]
    sparse = [m.weight for m in tables]
    first = make_optimizer(cfg.optimizer, dense, cfg.lr)
    second = RowAdam(sparse, lr=cfg.lr) if cfg.optimizer == "adam" else make_optimizer(cfg.optimizer, sparse, cfg.lr)
    return JointOptimizer([first, second])
