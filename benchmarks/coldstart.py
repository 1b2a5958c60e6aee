"""Cold start on held-out users (issues 7, 17): hold a share of users out of training entirely
and compare, on their latest items, most-popular with features-only scorers: the segment prior
(features-conditioned popularity with shrinkage, chosen on validation users) and, unless
``--no-model``, widedeep from features with and without a popularity prior. Sampled (1 + 99) and
full protocols.

    nice python benchmarks/coldstart.py --dataset ncf-ml-1m --no-model --out runs/cs   # counts only, fast
    nice python benchmarks/coldstart.py --dataset ncf-ml-1m --no-model --recency --out runs/cs  # + recency rows
    (recency rows count only rows dated no later than the scored user's latest; --count-future: all)
    nice python benchmarks/coldstart.py --dataset ml-100k --epochs 20 --out runs/coldstart-ml100k

Writes OUT/coldstart.json, OUT/coldstart.png and (with a model) the run directory itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ncf import coldstart
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fraction", type=float, default=0.1, help="share of users held out as cold test users "
                   "(as many again are cold validation users)")
    p.add_argument("--folds", type=int, default=10, help="cross-validation folds over warm users for the prior")
    p.add_argument("--no-model", action="store_true", help="count-based scorers only (no widedeep)")
    p.add_argument("--recency", action="store_true", help="also recent-pop and segment prior + recency: counts "
                   "favouring recent events (NCF layout: the warm users' latest rows weigh w; timestamped "
                   "data: exp decay by half-life), the weighting chosen on validation users")
    p.add_argument("--count-future", action="store_true", help="NCF layout: count every warm latest row for "
                   "every scored user (default: only those dated no later than the user's own latest row)")
    p.add_argument("--recency-joint", action="store_true", help="choose the prior's weighting jointly with its "
                   "mode and alpha (default: the weighting chosen for recent-pop)")
    p.add_argument("--model-run", type=Path, default=None, help="a widedeep run already trained on this "
                   "benchmark's warm users (instead of training one)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--factors", type=int, default=16)
    p.add_argument("--layers", default="64,32,16")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--neg", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--id-dropout", type=float, default=0.3)
    p.add_argument("--crosses", default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    cfg = None
    if not a.no_model and a.model_run is None:
        cfg = TrainConfig(model="widedeep", factors=a.factors, layers=a.layers, epochs=a.epochs, lr=a.lr, neg=a.neg,
                          batch_size=a.batch_size, patience=a.patience, seed=a.seed, threads=a.threads,
                          params={"id_dropout": a.id_dropout, "crosses": a.crosses})
    t0 = time.perf_counter()
    res = coldstart.run(DataConfig(source=a.dataset, seed=a.seed), cfg, a.out, a.fraction, a.seed, overwrite=True,
                        model_run=a.model_run, folds=a.folds, recency=a.recency, recency_joint=a.recency_joint,
                        past_only=not a.count_future)
    t = Table(title=f"{res['dataset']}: {res['cold_users']} cold test users, {res['cold_valid_users']} cold "
                    f"validation users, {res['warm_users']} warm users")
    for col in ("users", "scorer", "HR@10 sampled", "NDCG@10 sampled", "HR@10 full", "NDCG@10 full"):
        t.add_column(col, justify="left" if col in ("users", "scorer") else "right")
    for group in ("warm", "cold"):
        for name, m in res.get(group, {}).items():
            t.add_row(group, name, *(f"{m[p][k]:.4f}" for p in ("sampled", "full") for k in ("hr@10", "ndcg@10")))
    Console().print(t)
    print(json.dumps({"choices": {k: {p: {x: v[p][x] for x in ("weighting", "mode", "alpha", "beta")
                                         if x in v[p]}
                                      for p in ("sampled", "full")} for k, v in res["choices"].items()},
                      "train_seconds": res.get("train_seconds"), "seconds": round(time.perf_counter() - t0, 1),
                      "out": str(a.out)}))
    return res


if __name__ == "__main__":
    main()
