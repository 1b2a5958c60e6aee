"""Sparse updates for embedding tables larger than a batch.

A step touches the batch's rows only: the tables' gradients are sparse (``gather(...,
sparse=True)`` in :mod:`ncf.models.kernels`: one row a sample, duplicates not yet summed) and
:class:`RowAdam` sums each distinct row's gradient and updates those rows' moments and weights
("lazy" Adam, as TensorFlow's LazyAdam and torch's SparseAdam: a row's moments move only when
the row is in a batch); on CPU in one compiled pass (:mod:`ncf.train.rowkernels`).
The other parameters keep their dense optimizer; :class:`JointOptimizer` steps both and
saves them as one state dict.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.graph import increment_version

from ncf.config import TrainConfig
from ncf.errors import ConfigError
from ncf.models import Model
from ncf.models.kernels import distinct
from ncf.train.losses import make_optimizer

SPARSE_MIN_ROWS = 100_000  # users + items below which "auto" never picks sparse updates


class RowAdam(torch.optim.Optimizer):
    """Adam on the rows present in a sparse gradient (duplicates summed); dense gradients are
    refused. Bias correction counts this parameter's steps, as ``torch.optim.SparseAdam``.

    ``fused``: CPU tables (2-D, float32/float64) go through the compiled kernel of
    :mod:`ncf.train.rowkernels` (one pass over the per-sample gradients, one over the distinct
    rows, rows split between ``torch.get_num_threads()`` threads) instead of PyTorch ops;
    ``None`` (default) uses it where numba imports, ``True`` requires it, ``False`` never.
    Both give the same update up to float rounding."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.fused = fused
        if fused:
            _row_kernels(required=True)

    @torch.no_grad()
    def step(self, closure=None):
        jobs = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ConfigError("RowAdam takes sparse gradients (embedding tables with sparse=True)")
                fused = self._fusable(p)
                if fused:  # the kernel does not check bounds: check first, before any state moves
                    _check_rows(p.grad._indices()[0], p.shape[0])
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float64)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                st["step"] += 1
                if fused and st["exp_avg"].is_contiguous() and st["exp_avg_sq"].is_contiguous():
                    jobs.append((p, st, group))
                else:
                    self._step_ops(p, st, group)
        if jobs:
            self._step_fused(jobs)
        return None

    @staticmethod
    def _step_ops(p: torch.Tensor, st: dict, group: dict) -> None:
        b1, b2 = group["betas"]
        t = float(st["step"])
        rows, vals = coalesced_rows(p.grad)
        m = st["exp_avg"].index_select(0, rows).mul_(b1).add_(vals, alpha=1 - b1)
        v = st["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(vals, vals, value=1 - b2)
        st["exp_avg"].index_copy_(0, rows, m)
        st["exp_avg_sq"].index_copy_(0, rows, v)
        denom = v.div_(1 - b2 ** t).sqrt_().add_(group["eps"])
        # (index_add_ with alpha takes a path several times slower on CPU: scale first)
        p.index_add_(0, rows, m.div_(denom).mul_(-group["lr"] / (1 - b1 ** t)))

    def _fusable(self, p: torch.Tensor) -> bool:
        if self.fused is False or p.device.type != "cpu" or p.dim() != 2 or not p.is_contiguous():
            return False
        if p.dtype not in (torch.float32, torch.float64):
            return False
        return _row_kernels(required=bool(self.fused)) is not None

    def _step_fused(self, jobs: list[tuple[torch.Tensor, dict, dict]]) -> None:
        kernels = _row_kernels(required=True)
        threads = max(1, torch.get_num_threads())
        parts = 1 << (threads - 1).bit_length()  # rows split by their low bits: a power of two
        scratch = self.__dict__.setdefault("_scratch", {})
        tasks = []
        for p, st, group in jobs:
            b1, b2 = group["betas"]
            t = float(st["step"])
            grad = p.grad  # coalesced or not: the kernel sums duplicates
            idx = grad._indices()[0].contiguous().numpy()
            vals = grad._values().to(p.dtype).reshape(len(idx), p.shape[1]).contiguous().numpy()
            w, m, v = p.detach().numpy(), st["exp_avg"].numpy(), st["exp_avg_sq"].numpy()
            slot, rows, acc = _scratch_for(scratch, id(p), w, parts, len(idx))
            consts = [w.dtype.type(c) for c in (b1, b2, 1 - b1, 1 - b2, group["lr"] / (1 - b1 ** t), 1 - b2 ** t,
                                                group["eps"])]
            tasks += [(kernels.adam_rows, idx, vals, part, parts - 1, slot, rows[part], acc[part], w, m, v, *consts)
                      for part in range(parts)]
        try:
            if threads == 1:
                for fn, *args in tasks:
                    fn(*args)
            else:
                if self.__dict__.get("_pool", (0, None))[0] != threads:
                    self._pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="ncf-rowadam"))
                futures = [self._pool[1].submit(*task) for task in tasks]
                wait(futures)  # all of them, before a failure cleans up
                for fut in futures:
                    fut.result()
        except BaseException:
            for slot, _, _ in scratch.values():  # leave the row maps clean for the next step
                slot.fill(-1)
            raise
        finally:
            for p, _, _ in jobs:
                increment_version(p)  # written through numpy: tell autograd the tables changed

    def __getstate__(self):  # torch's keeps defaults, state and groups only
        return {**super().__getstate__(), "fused": self.fused}


def _check_rows(idx: torch.Tensor, n_rows: int) -> None:
    if not len(idx):
        return
    lo, hi = torch.aminmax(idx)  # one pass
    if int(lo) < 0 or int(hi) >= n_rows:
        bad = idx[(idx < 0) | (idx >= n_rows)][0]
        raise IndexError(f"RowAdam: sparse gradient names row {int(bad)} of a table of {n_rows} rows")


def _scratch_for(scratch: dict, key: int, table: np.ndarray, parts: int, n: int):
    """The kernel's buffers for ``table``: ``slot`` (one int32 a table row, kept at -1 between
    calls) and, per part, ``rows`` and ``acc`` for up to ``n`` gradient rows (grown as needed)."""
    got = scratch.get(key)
    if got is None or got[0].shape[0] != len(table):
        got = (np.full(len(table), -1, np.int32), [], [])
    if len(got[1]) != parts or len(got[1][0]) < n:
        got = (got[0], [np.empty(n, np.int64) for _ in range(parts)],
               [np.empty((n, table.shape[1]), table.dtype) for _ in range(parts)])
    scratch[key] = got
    return got


@functools.cache
def _import_kernels():
    """:mod:`ncf.train.rowkernels` (imports numba), or the ImportError that says why not."""
    try:
        return importlib.import_module("ncf.train.rowkernels")
    except Exception as e:  # numba missing, or unable to compile or cache here
        return ImportError(f"{type(e).__name__}: {e}")


_fallback_announced = False


def _row_kernels(required: bool):
    """The kernels' module, or None where it does not import and is not ``required``; the
    fallback (PyTorch ops) is announced once."""
    global _fallback_announced
    got = _import_kernels()
    if not isinstance(got, ImportError):
        return got
    if required:
        raise ImportError(f"RowAdam(fused=True) needs numba: {got}") from got
    if not _fallback_announced:
        _fallback_announced = True
        warnings.warn(f"numba is not importable ({got}): RowAdam falls back to PyTorch ops, "
                      "2-3x slower on tables larger than the cache", RuntimeWarning, stacklevel=3)
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
            raise ConfigError(f"saved optimizer has {len(groups)} parameter groups, this one {len(self.param_groups)}")
        for o in self.optimizers:
            mine, groups = groups[: len(o.param_groups)], groups[len(o.param_groups):]
            n = sum(len(g["params"]) for g in mine)
            o.load_state_dict({
                "state": {pid - offset: st for pid, st in sd["state"].items() if offset <= pid < offset + n},
                "param_groups": [{**g, "params": [pid - offset for pid in g["params"]]} for g in mine],
            })
            offset += n


def use_sparse(model: Model, cfg: TrainConfig, nccl: bool, cuda: bool = False) -> bool:
    """Whether the embedding tables get sparse gradients (see ``TrainConfig.sparse``)."""
    ok = getattr(model, "supports_sparse", False)
    if cfg.sparse == "on" and not ok:
        raise ConfigError(f"--sparse on: model {model.name!r} does not support sparse embedding gradients")
    if cfg.sparse == "on" and nccl:
        raise ConfigError("--sparse on: NCCL cannot all-reduce sparse gradients; use gloo or --sparse off")
    if cfg.sparse != "auto":
        return cfg.sparse == "on"
    # CPU: tables larger than a batch (a dense update would cost more than the batch's rows,
    # and the first layer cannot go table-side, see ncf.models.kernels.use_tables) and large in
    # absolute terms: small datasets keep plain dense Adam whatever the batch. A GPU updates
    # whole tables faster than it sorts a batch's rows (H200: 10M interactions 5.7 vs 7.3 s an
    # epoch, 50M 22.6 vs 28.6 s; docs/RESULTS.md, "Scaling"): dense there.
    rows = model.n_users + model.n_items
    return ok and not nccl and not cuda and rows > cfg.batch_size and rows >= SPARSE_MIN_ROWS


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
