"""Tune item2vec on the validation holdout (sampled HR@10 / NDCG@10), one setting per line.

Each ``--setting`` is a comma-separated list of KEY=VALUE item2vec hyperparameters; every
setting is fitted once and its validation metrics are reported for each profile length in
``--recent`` (the profile is recomputed, the vectors are not). Test is not looked at here.

    nice python benchmarks/item2vec_sweep.py --dataset ml-100k \
        --setting window=10 --setting window=50 --recent 5,10,25,0 --out /tmp/sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.eval.evaluator import evaluate
from ncf.models.item2vec import Item2Vec


def parse_setting(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=", 1)
        out[k] = json.loads(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--setting", action="append", default=[], help="KEY=VALUE[,KEY=VALUE...] (repeatable)")
    ap.add_argument("--recent", default="0", help="profile lengths to try, comma-separated (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="append one JSON line per (setting, recent)")
    args = ap.parse_args()
    console = Console(stderr=True)
    ds = load_dataset(DataConfig(source=args.dataset))
    recents = [int(x) for x in args.recent.split(",")]
    table = Table(title=f"item2vec on {args.dataset}: validation (sampled 1+99)")
    for col in ("setting", "recent", "hr@10", "ndcg@10", "fit s"):
        table.add_column(col)
    for text in args.setting or [""]:
        params = parse_setting(text)
        cfg = TrainConfig(model="item2vec", seed=args.seed, params=params)
        model = Item2Vec.from_params(ds.n_users, ds.n_items, **cfg.model_params(Item2Vec))
        t0 = time.perf_counter()
        model.fit(ds, cfg)
        fit_s = time.perf_counter() - t0
        for r in recents:
            model.set_profiles(ds.train.matrix, ds.train.timestamps, recent=r)
            v = evaluate(model, ds.valid, "sampled")
            row = {"dataset": args.dataset, "params": params, "recent": r, "valid": v, "fit_seconds": fit_s}
            table.add_row(text or "(defaults)", str(r), f"{v['hr@10']:.4f}", f"{v['ndcg@10']:.4f}", f"{fit_s:.0f}")
            console.print(f"{text or '(defaults)'} recent={r}: valid hr@10 {v['hr@10']:.4f} "
                          f"ndcg@10 {v['ndcg@10']:.4f} (fit {fit_s:.0f}s)")
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    Console().print(table)


if __name__ == "__main__":
    main()
