"""Small differentiable building blocks that make the NCF models fast on CPU and GPU.

``gather(table, idx)`` is ``table[idx]`` whose backward scatters with one ``index_add_``
into a dense ``[n_rows, d]`` gradient. ``nn.Embedding``'s dense backward sorts the indices
first; at the batch sizes the trainer uses that sort costs more than the add itself
(measured in docs/RESULTS.md, "Training speed").

``use_tables(batch, n_users, n_items)`` says when the first layer of an MLP tower should
be applied to the embedding *tables* instead of to the batch's rows: the first layer of
``[p_u ; q_i]`` is ``W_u p_u + W_i q_i + b``, so ``(P W_u^T)[u] + (Q W_i^T + b)[i]`` gives
the same numbers with ``(n_users + n_items) * d * h`` multiply-adds per step instead of
``batch * 2d * h``: cheaper once the batch outgrows the tables.
"""

from __future__ import annotations

import torch

from ncf.errors import ConfigError


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor, sparse: bool) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows, ctx.sparse = table.shape[0], sparse
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        shape = (ctx.n_rows, *grad.shape[1:])
        if ctx.sparse:  # one row a sample, uncoalesced: the optimizer sums duplicate rows once a step
            sparse = torch.sparse_coo_tensor(idx[None], grad, shape, is_coalesced=False, check_invariants=False)
            return sparse, None, None
        return grad.new_zeros(shape).index_add_(0, idx, grad), None, None


def distinct(idx: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(idx, return_inverse=True)`` for indexes below ``n_rows``: through a
    bitmap of the rows (linear time) while the table is at most 4 times the batch (beyond
    that, the bitmap's pass over the table costs more than sorting the batch: measured at
    65,536 indexes, 0.3 vs 0.9 ms for 20,000 rows, 1.0 vs 0.9 for 200,000, 1.8 vs 0.7 for
    1,000,000)."""
    if n_rows > 4 * len(idx):
        return torch.unique(idx, return_inverse=True)
    mark = torch.zeros(n_rows, dtype=torch.bool, device=idx.device)
    mark[idx] = True
    rows = mark.nonzero().squeeze(-1)
    pos = torch.empty(n_rows, dtype=torch.int64, device=idx.device)
    pos[rows] = torch.arange(len(rows), device=idx.device)
    return rows, pos[idx]


def gather(table: torch.Tensor, idx: torch.Tensor, sparse: bool = False) -> torch.Tensor:
    """``table[idx]``: ``[n, d]`` x ``[B]`` -> ``[B, d]``; differentiable in ``table``, with
    a sparse gradient (as ``nn.Embedding(sparse=True)``) when ``sparse``."""
    if idx.dtype != torch.int64:
        idx = idx.long()  # index_add_ is about twice as fast with int64 indices on CPU
    if not (torch.is_grad_enabled() and table.requires_grad):
        return table.index_select(0, idx)
    return _Gather.apply(table, idx, sparse)


class _ReluDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, drop_256: int, generator) -> torch.Tensor:
        n = x.numel()
        words = torch.randint(-(2**31), 2**31, ((n + 3) // 4,), dtype=torch.int32, device=x.device,
                              generator=generator)
        drop = words.view(torch.uint8)[:n].view(x.shape) < drop_256  # one random byte a unit
        scale = 256 / (256 - drop_256)
        y = x.clamp_min(0).mul_(scale).masked_fill_(drop, 0)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors  # y > 0 exactly where x > 0 and the unit was kept
        return torch.ops.aten.threshold_backward(grad, y, 0).mul_(ctx.scale), None, None


def relu_dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``dropout(relu(x), p)`` in one pass with one random byte per unit (p rounded to a
    multiple of 1/256) and a saved output instead of a float mask: about a third of the cost
    of ``F.dropout(F.relu(x))`` on CPU. ``generator``: where the bytes come from (None: torch's
    global generator)."""
    drop_256 = round(p * 256)
    if not 0 <= drop_256 < 256:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    if drop_256 == 0:
        return torch.relu(x)
    return _ReluDropout.apply(x, drop_256, generator)


def use_tables(batch: int, n_users: int, n_items: int, sparse: bool = False) -> bool:
    """Whether applying a first layer to the tables costs less than applying it per row
    (never with sparse gradients: those are for tables much larger than a batch)."""
    return not sparse and batch >= n_users + n_items
