"""sasrec training speed: targets/s, epoch time and peak RSS on ml-100k and on a synthetic
set of time-ordered sequences (1M interactions by default).

    nice python benchmarks/sasrec_speed.py --epochs 2 --loss bce,ce

Each case runs in a fresh process (so that peak RSS is that case's own), trains ``--epochs``
epochs without validation, and reports the mean epoch time after the first (warm-up) epoch
where there are two or more. A "target" is one next-item prediction (one position of a
window). The synthetic set: ``--users`` users, each a history of ``--length`` items drawn
from ``--items`` items by a random walk (item i is followed by i + 1..i + 5, mod items),
with increasing timestamps. The load average is printed beside the table: on a shared
machine the seconds are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic(users: int, length: int, items: int, seed: int = 0):
    from ncf.data.interactions import Interactions
    from ncf.data.split import Dataset, HoldOut

    rng = np.random.default_rng(seed)
    steps = rng.integers(1, 6, size=(users, length))
    steps[:, 0] = rng.integers(0, items, size=users)
    seq = np.cumsum(steps, axis=1) % items
    u = np.repeat(np.arange(users), length)
    t = np.tile(np.arange(length), users)
    train = Interactions.from_raw(u, seq.ravel(), t)
    empty = HoldOut(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 1), np.int64))
    return Dataset("synthetic", train, empty, None, train.nnz)


def case(args) -> dict:
    import torch

    from ncf.config import TrainConfig
    from ncf.models import get_model_class

    if args.data == "ml-100k":
        import dataclasses

        from ncf.data.datasets import DataConfig, load_dataset

        ds = dataclasses.replace(load_dataset(DataConfig(source="ml-100k")), valid=None)
    else:
        ds = synthetic(args.users, args.length, args.items)
    cls = get_model_class(args.model)
    params = {"loss": args.loss_one, "epochs": args.epochs, "max_len": args.max_len, "batch_size": args.batch_size}
    cfg = TrainConfig(model=args.model, seed=0, device="cpu", threads=args.threads, params=params)
    cfg.progress = False
    torch.manual_seed(0)
    m = cls.from_params(ds.n_users, ds.n_items, **cfg.model_params(cls))
    t0, c0 = time.perf_counter(), time.process_time()
    m.fit(ds, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = m.stats["history"]
    # scoring a batch of 256 users: from the stored sequences, and from histories given as tensors
    users = torch.arange(min(256, ds.n_users))
    seqs = [row[row > 0] - 1 for row in m.seq[users]]
    t1 = time.perf_counter()
    for _ in range(5):
        m.score_all(users)
    score_all_ms = (time.perf_counter() - t1) / 5 * 1000
    t1 = time.perf_counter()
    for _ in range(5):
        m.score_histories(seqs)
    histories_ms = (time.perf_counter() - t1) / 5 * 1000
    timed = hist[1:] if len(hist) > 1 else hist
    epoch_s = sum(r["train_seconds"] for r in timed) / len(timed)
    return {"data": args.data, "model": args.model, "loss": args.loss_one, "interactions": int(ds.train.nnz),
            "users": ds.n_users, "items": ds.n_items, "windows": m.stats["windows"],
            "targets": m.stats["targets_per_epoch"], "epoch_s": epoch_s,
            "targets_per_s": m.stats["targets_per_epoch"] / epoch_s, "fit_s": wall,
            "fit_cpu_s_per_epoch": cpu / len(hist), "score_all_256_ms": score_all_ms,
            "score_histories_256_ms": histories_ms,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="ml-100k,synthetic")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--loss", default="bce,ce")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP waits on shared cores)")
    ap.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loss-one", default="bce", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return
    rows = []
    for data in args.data.split(","):
        for loss in args.loss.split(","):
            cmd = [sys.executable, __file__, "--case", "--data", data, "--model", args.model, "--loss-one", loss,
                   "--epochs", str(args.epochs), "--max-len", str(args.max_len), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads), "--users", str(args.users), "--length", str(args.length),
                   "--items", str(args.items)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.model}, max_len {args.max_len}, batch {args.batch_size} windows, {args.epochs} epochs, "
          f"{args.threads} thread(s) "
          f"(mean epoch after the first); load average {os.getloadavg()}\n")
    print("| data | interactions | users / items | loss | windows | targets/epoch | epoch s | targets/s "
          "| CPU s / epoch (fit) | score 256 users: score_all / score_histories ms | peak RSS MB | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['interactions']:,} | {r['users']:,} / {r['items']:,} | {r['loss']} | "
              f"{r['windows']:,} | {r['targets']:,} | {r['epoch_s']:.1f} | {r['targets_per_s']:,.0f} | "
              f"{r.get('fit_cpu_s_per_epoch', float('nan')):.1f} | "
              f"{r.get('score_all_256_ms', float('nan')):.0f} / {r.get('score_histories_256_ms', float('nan')):.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
