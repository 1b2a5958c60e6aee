"""The training-free graph filters (GF-CF, BSPM) and the fitted linear baselines (EASE, item-KNN,
iALS) on the LightGCN split of Gowalla, under the field's full-ranking protocol.

    python benchmarks/graph_filters_gowalla.py gfcf bspm          # published settings, test split
    python benchmarks/graph_filters_gowalla.py ease --valid --set l2=100,200,500
    python benchmarks/graph_filters_gowalla.py itemknn --set k=50,200
    python benchmarks/graph_filters_gowalla.py ials --valid --set factors=256 --set unobserved_weight=0.2

Data: ``$NCF_DATA_DIR/gowalla/train.txt`` and ``test.txt`` (``user item item ...`` lines,
0-based). ``--valid`` evaluates on a validation split carved from ``train.txt`` alone (10 % of
each user's training items at random, seeded; users with a single item keep it), fitting on
the rest: that is where hyperparameters are chosen. Without it the model is fitted on all of
``train.txt`` and evaluated once on ``test.txt``. GF-CF and BSPM have no training; their
settings are the papers' (Shen et al. 2021: alpha 0.3, k 256; Choi et al. 2023: the reference
code's Gowalla command), so they are evaluated on the test split directly.

Metric: every item ranked, the user's training items excluded; Recall@K = hits / the user's
number of held-out items, NDCG@K with binary gains and the ideal over min(n, K); averaged over
the users with a held-out item. Printed per setting: Recall@20, NDCG@20, fit and scoring
seconds, the process's peak RSS so far (one process runs every setting given: run one model
per process to read its own peak).
"""

from __future__ import annotations

# isort: off
import ncf  # noqa: F401  (before torch: sets the OpenMP wait policy)
# isort: on

import argparse
import itertools
import json
import os
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp
import torch

from ncf.config import TrainConfig
from ncf.models import get_model_class

N_USERS, N_ITEMS = 29_858, 40_981


def read_adjacency(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 pairs of a ``user item item ...`` file."""
    users, items = [], []
    for line in path.read_text().splitlines():
        ids = line.split()
        if len(ids) > 1:
            users.append(np.full(len(ids) - 1, int(ids[0]), dtype=np.int64))
            items.append(np.asarray(ids[1:], dtype=np.int64))
    return np.concatenate(users), np.concatenate(items)


def to_csr(users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(N_USERS, N_ITEMS))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def carve(train: sp.csr_matrix, share: float = 0.1, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(fit, valid): ``share`` of each user's items at random (at least one where the user has two)."""
    rng = np.random.default_rng(seed)
    coo = train.tocoo()
    order = np.lexsort((rng.random(coo.nnz), coo.row))  # shuffled within each user
    rows, cols = coo.row[order], coo.col[order]
    counts = np.diff(train.indptr)
    n_valid = np.where(counts > 1, np.maximum(1, np.round(counts * share)), 0).astype(np.int64)
    rank = np.arange(len(rows)) - np.repeat(train.indptr[:-1], counts)
    held = rank < np.repeat(n_valid, counts)
    return to_csr(rows[~held], cols[~held]), to_csr(rows[held], cols[held])


def evaluate(model, train: sp.csr_matrix, test: sp.csr_matrix, k: int = 20, block: int = 2048) -> dict:
    """Recall@k and NDCG@k (see the module docstring) and the seconds spent scoring."""
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)
    recall, ndcg, seconds = [], [], 0.0
    for s in range(0, len(users), block):
        u = users[s:s + block]
        t0 = time.perf_counter()
        scores = model.score_all(torch.as_tensor(u)).float()
        seconds += time.perf_counter() - t0
        seen = train[u].tocoo()
        scores[torch.as_tensor(seen.row, dtype=torch.int64), torch.as_tensor(seen.col, dtype=torch.int64)] = -np.inf
        top = torch.topk(scores, k, dim=1).indices.numpy()
        truth = test[u]
        hits = np.asarray(truth[np.repeat(np.arange(len(u)), k), top.ravel()]).reshape(len(u), k) > 0
        n = np.diff(truth.indptr)
        recall.append(hits.sum(1) / n)
        ndcg.append((hits * discounts).sum(1) / ideal[np.minimum(n, k) - 1])
    return {f"recall@{k}": float(np.concatenate(recall).mean()), f"ndcg@{k}": float(np.concatenate(ndcg).mean()),
            "score_s": round(seconds, 1), "users": int(len(users))}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def grid(sets: list[str]) -> list[dict]:
    """``--set a=1,2 --set b=x`` -> every combination as a dict (numbers parsed)."""
    axes = []
    for s in sets:
        key, _, values = s.partition("=")
        axes.append([(key, json.loads(v) if v.replace(".", "").replace("e-", "").isdigit() else v)
                     for v in values.split(",")])
    return [dict(c) for c in itertools.product(*axes)] or [{}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default=os.environ.get("NCF_DATA_DIR", "/work/shared/data"))
    ap.add_argument("--valid", action="store_true", help="fit on train minus a carved 10%% and evaluate on it")
    ap.add_argument("--set", action="append", default=[], help="param=v1,v2 (a grid over every --set)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--block", type=int, default=2048, help="users per score_all call")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data) / "gowalla"
    train = to_csr(*read_adjacency(root / "train.txt"))
    if args.valid:
        train, target = carve(train)
    else:
        target = to_csr(*read_adjacency(root / "test.txt"))
    print(f"# {'validation (carved from train.txt)' if args.valid else 'test.txt'}: {train.nnz} fitted pairs, "
          f"{target.nnz} held out; load average {os.getloadavg()}", flush=True)
    data = SimpleNamespace(train=SimpleNamespace(matrix=train), n_users=N_USERS, n_items=N_ITEMS)
    for name in args.models:
        cls = get_model_class(name)
        for params in grid(args.set):
            params = {k: v for k, v in params.items() if k in cls.params}
            model = cls.from_params(N_USERS, N_ITEMS, **params)
            t0 = time.perf_counter()
            model.fit(data, TrainConfig(model=name, seed=0, threads=args.threads))
            fit_s = time.perf_counter() - t0
            res = evaluate(model, train, target, block=args.block)
            print(json.dumps({"model": name, **model.hparams(), **res, "fit_s": round(fit_s, 1),
                              "peak_rss_gb": round(peak_rss_gb(), 2), "load": os.getloadavg()[0]}), flush=True)
            del model


if __name__ == "__main__":
    main()
