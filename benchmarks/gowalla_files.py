"""Reading LightGCN's Gowalla split (``DATA_DIR/gowalla/train.txt``, ``test.txt``: one line per
user, ``user item item ...``, 0-based) into arrays, without ncf's data loading: shared by
``topk_eval_speed.py`` and ``batch_recommend.py``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def data_dir(given: str | None) -> Path:
    """``--data-dir``, else $NCF_DATA_DIR: the folder holding ``gowalla/``."""
    d = given or os.environ.get("NCF_DATA_DIR")
    if not d:
        raise SystemExit("give --data-dir (the folder holding gowalla/) or set NCF_DATA_DIR")
    return Path(d)


def read_adjacency(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) [P] int64 from ``user item item ...`` lines (a user alone on a line: no pairs)."""
    users, items = [], []
    with open(path) as f:
        for line in f:
            ids = np.array(line.split(), dtype=np.int64)
            if len(ids) > 1:
                users.append(np.full(len(ids) - 1, ids[0]))
                items.append(ids[1:])
    return np.concatenate(users), np.concatenate(items)


def gowalla(folder: Path) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(train [n_users, n_items] 0/1 CSR float32, test users [P], test items [P])."""
    tu, ti = read_adjacency(folder / "gowalla" / "train.txt")
    vu, vi = read_adjacency(folder / "gowalla" / "test.txt")
    shape = (int(max(tu.max(), vu.max())) + 1, int(max(ti.max(), vi.max())) + 1)
    train = sp.csr_matrix((np.ones(len(tu), np.float32), (tu, ti)), shape=shape)
    train.sum_duplicates()
    train.data[:] = 1.0
    return train, vu, vi


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def factors(n_users: int, n_items: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random Gaussian user and item factors [n, d] float32, scaled like a fitted model's (1/sqrt(d))."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(d)
    return ((rng.standard_normal((n_users, d), dtype=np.float32) * scale),
            (rng.standard_normal((n_items, d), dtype=np.float32) * scale))


def ials_model(user_factors: np.ndarray, item_factors: np.ndarray):
    """ncf's registry ``ials`` model holding these factors (score = user · item)."""
    from ncf.models.ials import ImplicitALS

    model = ImplicitALS(len(user_factors), len(item_factors), factors=user_factors.shape[1])
    model._put("user_factors", user_factors)
    model._put("item_factors", item_factors)
    return model.eval()


def fit_implicit(train: sp.csr_matrix, d: int, iterations: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Factors of implicit's ALS fitted briefly on ``train`` (its default threads)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=d, iterations=iterations, random_state=seed)
        als.fit(train, show_progress=False)
    return np.asarray(als.user_factors, np.float32), np.asarray(als.item_factors, np.float32)
