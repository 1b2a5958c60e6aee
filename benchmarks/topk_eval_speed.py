"""Time of the full ``topk`` evaluation of LightGCN's Gowalla split: 29,858 test users, each
ranking all 40,981 items except their training items, every test item relevant (recall@K,
capped_recall@K, ndcg@K, ... at every K; :func:`ncf.eval.topk.evaluate_topk_pairs`).

The model (``--model``) is ncf's ``ials`` (a factor model: score = user · item) holding random
factors (``random``, the timing case: the ranking work does not depend on the values) or factors
of implicit's ALS fitted for ``--fit-iterations`` (``ials``: then the metrics mean something), or
ncf's most-popular model (``pop``: a check of the evaluator against the data README's
popularity row, Recall@20 0.0416 / NDCG@20 0.0317).
``--check-users N`` recomputes N random users' metrics by a plain per-user sort in NumPy and
prints the largest difference.

    python benchmarks/topk_eval_speed.py --data-dir /work/shared/data --threads 2 -k 10,20

Prints ``uptime`` beside the timing: on a shared machine it is measured under load.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from gowalla_files import data_dir, factors, fit_implicit, gowalla, ials_model, uptime
from ncf.eval.topk import evaluate_topk_pairs
from ncf.models.baselines import Popularity
from ncf.recommend import block_users


def slow_metrics(user_f: np.ndarray, item_f: np.ndarray, train, users, test_u, test_i, k: int) -> dict[str, float]:
    """recall, capped_recall and ndcg @k of ``users``, one user at a time: NumPy scores, a full
    sort by (-score, item index), plain-Python metrics."""
    rel: dict[int, set] = {}
    for u, i in zip(test_u.tolist(), test_i.tolist(), strict=True):
        rel.setdefault(u, set()).add(i)
    out = {"recall": [], "capped_recall": [], "ndcg": []}
    for u in users.tolist():
        s = item_f @ user_f[u]
        s[train.indices[train.indptr[u]:train.indptr[u + 1]]] = -np.inf
        top = np.lexsort((np.arange(len(s)), -s))[:k].tolist()
        hit = [i in rel[u] for i in top]
        n = len(rel[u])
        out["recall"].append(sum(hit) / n)
        out["capped_recall"].append(sum(hit) / min(n, k))
        dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hit) if h)
        out["ndcg"].append(dcg / sum(1 / math.log2(r + 2) for r in range(min(n, k))))
    return {f"{m}@{k}": float(np.mean(v)) for m, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="Folder holding gowalla/ (default: $NCF_DATA_DIR).")
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("-k", default="20", help="Cut-offs, e.g. 10,20.")
    ap.add_argument("--batch-users", type=int, default=0, help="Users scored per block (0: ncf's default).")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", choices=["random", "ials", "pop"], default="random")
    ap.add_argument("--fit-iterations", type=int, default=15, help="--model ials: implicit ALS iterations.")
    ap.add_argument("--check-users", type=int, default=200, help="Users recomputed by the slow reference (0: none).")
    ap.add_argument("--json", action="store_true", help="Also print the results as JSON.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = tuple(int(x) for x in args.k.split(","))
    console = Console(width=140)
    t0 = time.perf_counter()
    train, test_u, test_i = gowalla(data_dir(args.data_dir))
    read_s = time.perf_counter() - t0
    n_users, n_items = train.shape
    if args.model == "ials":
        user_f, item_f = fit_implicit(train, args.factors, args.fit_iterations)
    else:
        user_f, item_f = factors(n_users, n_items, args.factors)
    model = Popularity.from_matrix(train) if args.model == "pop" else ials_model(user_f, item_f)
    load_before = uptime()
    times, cpu, res = [], [], None
    block = args.batch_users or block_users(n_items)
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        res = evaluate_topk_pairs(model, test_u, test_i, train, ks, batch_users=block)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    load_after = uptime()
    check = None
    if args.check_users and args.model != "pop":
        users = np.random.default_rng(0).choice(np.unique(test_u), args.check_users, replace=False)
        sel = np.isin(test_u, users)
        fast = evaluate_topk_pairs(model, test_u[sel], test_i[sel], train, max(ks))
        slow = slow_metrics(user_f, item_f, train, users, test_u[sel], test_i[sel], max(ks))
        check = max(abs(fast[m] - slow[m]) for m in slow)
    t = Table(title=f"topk evaluation of Gowalla ({n_users} users with test items x {n_items} items, "
                    f"{len(test_u)} test pairs; read in {read_s:.1f} s)")
    for c in ("factors", "k", "threads", "block", "runs", "min s", "median s", "median CPU s"):
        t.add_column(c, justify="right")
    t.add_row(str(args.factors) if args.model != "pop" else "pop", ",".join(map(str, ks)),
              str(torch.get_num_threads()), str(block), str(args.repeat), f"{min(times):.2f}",
              f"{statistics.median(times):.2f}", f"{statistics.median(cpu):.2f}")
    console.print(t)
    what = {"random": "random factors: near zero by design", "pop": "most popular",
            "ials": f"implicit ALS, {args.fit_iterations} iterations"}[args.model]
    m = Table(title=f"metrics ({what})")
    m.add_column("metric")
    m.add_column("value", justify="right")
    for name, v in res.items():
        m.add_row(name, f"{v:.4f}")
    console.print(m)
    if check is not None:
        console.print(f"largest difference to the plain per-user sort on {args.check_users} users "
                      f"(recall, capped_recall, ndcg @{max(ks)}): {check:.2e}")
    console.print(f"load before: {load_before}\nload after:  {load_after}")
    if args.json:
        print(json.dumps({"model": args.model, "factors": args.factors, "ks": ks, "threads": torch.get_num_threads(),
                          "batch_users": block, "seconds": times, "cpu_seconds": cpu, "metrics": res, "check": check,
                          "uptime_before": load_before, "uptime_after": load_after}, indent=2))


if __name__ == "__main__":
    main()
