"""Fixtures for the re-ranking tests: a tiny trained run (GMF on a synthetic ratings file), its
attributes CSV, and ``milp``: the exact optimum of the slate problem by scipy.optimize.milp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from ncf.rerank.attributes import ItemAttributes
from ncf.rerank.constraints import Constraint, bind


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_ratings(path: Path, n_users: int = 80, n_items: int = 60, seed: int = 0) -> Path:
    """Two user groups liking two item halves, with a popularity skew; raw ids are 101.., 5001.."""
    rng = np.random.default_rng(seed)
    rows = []
    pop = np.linspace(2.0, 0.2, n_items // 2)
    for u in range(n_users):
        half = u % 2
        pool = np.arange(n_items // 2) + half * (n_items // 2)
        chosen = rng.choice(pool, size=12, replace=False, p=pop / pop.sum())
        for t, i in enumerate(chosen):
            rows.append(f"{101 + u}\t{5001 + i}\t5\t{1000 + t}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    from ncf.config import TrainConfig
    from ncf.data.datasets import DataConfig
    from ncf.train.run import train

    d = tmp_path_factory.mktemp("rerank-run")
    src = write_ratings(d / "ratings.tsv")
    out = d / "run"
    train(DataConfig(source=str(src), sep="\t"), TrainConfig(model="gmf", factors=8, epochs=3, batch_size=256,
                                                              device="cpu", threads=1, lr=0.01), out,
          progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_attributes(tiny_run) -> Path:
    """price, margin and a category for every item but the last two (which are reported missing)."""
    from ncf.checkpoint import load_run_maps

    _, items = load_run_maps(tiny_run)
    rng = np.random.default_rng(1)
    lines = ["item,price,margin,category"]
    for j, raw in enumerate(items.raw_ids[:-2]):
        cats = ["Drama"] if j % 3 == 0 else (["Comedy", "Drama"] if j % 7 == 0 else ["Comedy"])
        lines.append(f"{raw},{rng.uniform(1, 9):.2f},{rng.uniform(0, 1):.3f},{'|'.join(cats)}")
    path = tiny_run.parent / "attributes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path



def exact_optimum(P: np.ndarray, excluded: np.ndarray, k: int, attrs: ItemAttributes,
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


@pytest.fixture(scope="session")
def milp_optimum():
    """``exact_optimum(P, excluded, k, attrs, constraints) -> (total relevance, x)``."""
    return exact_optimum
