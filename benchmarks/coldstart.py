"""Wide & deep on warm and cold users (issue 7): hold a share of users out of training
entirely, train widedeep on the rest, and compare HR@10 / NDCG@10 with most-popular and
segment popularity on the same users, sampled (1 + 99) and full protocols.

    nice python benchmarks/coldstart.py --dataset ml-100k --epochs 20 --out runs/coldstart-ml100k

Writes OUT/coldstart.json, OUT/coldstart.png and the run directory itself (OUT/config.json ...).
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--fraction", type=float, default=0.1, help="share of users held out as cold")
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
    cfg = TrainConfig(model="widedeep", factors=a.factors, layers=a.layers, epochs=a.epochs, lr=a.lr, neg=a.neg,
                      batch_size=a.batch_size, patience=a.patience, seed=a.seed, threads=a.threads,
                      params={"id_dropout": a.id_dropout, "crosses": a.crosses})
    res = coldstart.run(DataConfig(source=a.dataset, seed=a.seed), cfg, a.out, a.fraction, a.seed, overwrite=True)
    t = Table(title=f"{res['model']} on {res['dataset']}: {res['warm_test_users']} warm / {res['cold_users']} cold "
                    f"users, best epoch {res['best_epoch']} of {res['epochs_run']}")
    for col in ("users", "scorer", "HR@10 sampled", "NDCG@10 sampled", "HR@10 full", "NDCG@10 full"):
        t.add_column(col, justify="left" if col in ("users", "scorer") else "right")
    for group in ("warm", "cold"):
        for name, m in res[group].items():
            t.add_row(group, name, *(f"{m[p][k]:.4f}" for p in ("sampled", "full") for k in ("hr@10", "ndcg@10")))
    Console().print(t)
    print(json.dumps({"train_seconds": round(res["train_seconds"], 1), "out": str(a.out)}))
    return res


if __name__ == "__main__":
    main()
