"""Exact optimum of the slate problem by scipy.optimize.milp (HiGHS), for small instances."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from ncf.rerank.attributes import ItemAttributes
from ncf.rerank.constraints import Constraint, bind


def exact(P: np.ndarray, excluded: np.ndarray, k: int, attrs: ItemAttributes,
          constraints: list[Constraint]) -> tuple[float, np.ndarray]:
    """(optimal total relevance, x [U, I] 0/1) maximising sum p x, every user exactly min(k, eligible)
    items, subject to ``constraints``. Raises AssertionError if HiGHS finds no optimum."""
    U, n = P.shape
    nx = U * n
    cov = next((c for c in constraints if c.kind == "coverage"), None)
    nvar = nx + (n if cov else 0)
    c_obj = np.zeros(nvar)
    c_obj[:nx] = -P.ravel()
    upper = np.ones(nvar)
    upper[:nx][excluded.ravel()] = 0
    rows, lo, hi = [], [], []
    slots = np.minimum((~excluded).sum(1), k)
    per_user = sp.kron(sp.eye(U), np.ones((1, n)), format="csr")
    rows.append(sp.hstack([per_user, sp.csr_matrix((U, nvar - nx))]))
    lo += slots.tolist()
    hi += slots.tolist()
    n_slots = slots.sum()
    for c in constraints:
        lin = bind(c, attrs)
        if lin is None:
            continue
        a = (P * lin.v[None, :]) if lin.uses_p else np.broadcast_to(lin.v[None, :], P.shape)
        a = a.ravel() / (U if lin.per_slate else n_slots)
        row = np.zeros(nvar)
        row[:nx] = a
        rows.append(sp.csr_matrix(row))
        lo.append(c.target if c.op == ">=" else -np.inf)
        hi.append(c.target if c.op == "<=" else np.inf)
    if cov:
        # y_i <= sum_u x_ui ; sum y >= N
        link = sp.hstack([-sp.kron(np.ones((1, U)), sp.eye(n)), sp.eye(n)])
        rows.append(link)
        lo += [-np.inf] * n
        hi += [0.0] * n
        row = np.zeros(nvar)
        row[nx:] = 1
        rows.append(sp.csr_matrix(row))
        lo.append(cov.target)
        hi.append(np.inf)
    A = sp.vstack(rows, format="csr")
    res = milp(c_obj, constraints=LinearConstraint(A, lo, hi), integrality=np.ones(nvar),
               bounds=Bounds(np.zeros(nvar), upper), options={"time_limit": 60})
    assert res.status == 0, f"MILP not solved: {res.message}"
    x = res.x[:nx].reshape(U, n).round()
    return float((P * x).sum()), x
