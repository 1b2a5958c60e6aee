"""Compiled (numba) kernel for :class:`ncf.train.sparse.RowAdam` on CPU tables.

With PyTorch ops, a row-sparse Adam step is a dozen passes over the batch's rows (sort or
bitmap for the distinct rows, ``index_add_`` of the per-sample gradients, gathers of the
moments, the elementwise update in several temporaries, scatters back); once the tables are
larger than the cache each pass goes to memory. The kernel here makes one pass over the
per-sample gradients (summing duplicates into a compact buffer) and one over the distinct
rows (moments and weight updated in place), and splits the rows between threads by the low
bits of their index so that threads never touch the same row.

Only imported where used: numba compiles the kernel on first use (cached on disk after).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, error_model="numpy")
def adam_rows(idx, grad, part, mask, slot, rows, acc, p, m, v, b1, b2, c1, c2, step_size, bias2, eps):
    """Adam on the rows ``r`` of ``idx`` with ``r & mask == part``: their gradient rows in
    ``grad`` (one a sample, duplicates allowed) are summed first. ``slot`` (one int32 per table
    row, -1 outside a call) maps a row to its place in ``rows``/``acc`` (scratch, at least as
    long as ``idx``). Returns the number of rows updated. No bounds checks: every index must
    be in ``[0, len(p))`` (the caller checks). ``c1 = 1 - b1``, ``c2 = 1 - b2``, all scalars of
    the table's dtype."""
    d = p.shape[1]
    k = 0
    for i in range(idx.shape[0]):
        r = idx[i]
        if (r & mask) != part:
            continue
        s = slot[r]
        if s < 0:
            s = k
            slot[r] = k
            rows[k] = r
            k += 1
            for j in range(d):
                acc[s, j] = grad[i, j]
        else:
            for j in range(d):
                acc[s, j] += grad[i, j]
    for q in range(k):
        r = rows[q]
        slot[r] = -1
        for j in range(d):
            g = acc[q, j]
            mj = b1 * m[r, j] + c1 * g
            vj = b2 * v[r, j] + c2 * g * g
            m[r, j] = mj
            v[r, j] = vj
            p[r, j] -= step_size * mj / (np.sqrt(vj / bias2) + eps)
    return k
