"""Sharded tables (TorchRec) against the DDP path: memory per rank and samples/s on synthetic data.

    python benchmarks/sharded.py --nproc 2 --rows 100000,300000,1000000      # the sweep (both paths)
    torchrun --nproc-per-node 2 benchmarks/sharded.py --worker --path sharded --users 1000000 --items 1000000

The sweep runs each (table rows, path) in its own torchrun launch, so its peak memory (RSS) is
its own: users = items = rows, ``--interactions`` uniform random (user, item) pairs, NeuMF
(``--factors``, ``--layers``; default 8 and 64,32,16,8: 40 columns a table, GMF 8 + MLP 32),
``--steps`` steps of ``--batch`` samples per rank after 2 warm-up steps. Per rank it reports the
bytes of tables and optimizer state it holds (exact: the tensors themselves), its peak RSS, and
samples/s over all ranks (steps only). DDP: every rank holds both tables and Adam's moments
(sparse row updates on CPU, the default for tables this size); sharded: row-wise AdaGrad fused
into the tables (one float a row), each table on its own rank (table-wise) or half the columns
of each (``--sharding column_wise``). ``--json FILE`` appends one JSON line a run.
"""

from __future__ import annotations

# isort: off
import ncf  # noqa: F401  (before torch: sets the OpenMP wait policy, see src/ncf/__init__.py)
# isort: on

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch


def random_matrix(n_users: int, n_items: int, nnz: int, seed: int = 0) -> sp.csr_matrix:
    """About ``nnz`` distinct uniform (user, item) pairs as a users x items 0/1 CSR."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, n_users * n_items, int(nnz * 1.02) + 16, dtype=np.int64))[:nnz]
    rows, cols = keys // n_items, keys % n_items
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_users))]).astype(np.int64)
    return sp.csr_matrix((np.ones(len(keys), np.float32), cols.astype(np.int32), indptr), shape=(n_users, n_items))


def worker(a: argparse.Namespace) -> None:
    import torch.distributed as dist

    from ncf.config import TrainConfig
    from ncf.data.interactions import IdMap, Interactions
    from ncf.data.split import Dataset, HoldOut
    from ncf.train import distributed
    from ncf.train.run import build

    m = random_matrix(a.users, a.items, a.interactions, a.seed)
    train = Interactions(m, IdMap(np.arange(a.users)), IdMap(np.arange(a.items)))
    empty = np.zeros(0, dtype=np.int64)
    ds = Dataset("synthetic", train, HoldOut(empty, empty, np.zeros((0, 100), dtype=np.int64)), None, m.nnz)
    sharded = a.path == "sharded"
    cfg = TrainConfig(model="neumf", factors=a.factors, layers=a.layers, epochs=2, batch_size=a.batch, lr=0.005,
                      dropout=0.0, patience=0, device=a.device, threads=a.threads, shard_tables=sharded,
                      sharding=a.sharding)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = build(cfg, ds)
    if sharded:
        from ncf.train.sharded import ShardedTrainer

        t = ShardedTrainer(model, ds, cfg, None, progress=False)
    else:
        from ncf.train.trainer import Trainer

        t = Trainer(model, ds, cfg, None, progress=False)
    t.train_epoch(1, max_steps=2)  # warm-up (and the optimizer's state allocated)
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    sync()
    distributed.barrier()
    t0 = time.perf_counter()
    _, n = t.train_epoch(2, max_steps=a.steps)
    sync()
    distributed.barrier()
    dt = time.perf_counter() - t0
    if sharded:
        b = t.local_bytes()
        tables, opt = b["tables"], b["table_optimizer"]
    else:
        tables = sum(p.numel() * p.element_size() for n_, p in t.model.named_parameters() if "_emb" in n_)
        opt = sum(v.numel() * v.element_size() for st in t.opt.state_dict()["state"].values()
                  for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    world, rank = distributed.world(), distributed.rank()
    mine = torch.zeros(world, 4, dtype=torch.int64)
    mine[rank] = torch.tensor([tables, opt, rss, rss_data])
    if dist.is_initialized():
        mine = mine.to(t.device)  # NCCL reduces device tensors only
        dist.all_reduce(mine)
        mine = mine.cpu()
    if rank == 0:
        full = a.users * sum(d for d in (a.factors, a.layers_list[0] // 2)) * 4 + \
            a.items * (a.factors + a.layers_list[0] // 2) * 4
        rec = {"path": a.path, "sharding": a.sharding if sharded else None, "world": world, "device": str(t.device),
               "users": a.users, "items": a.items, "interactions": int(m.nnz), "batch_per_rank": a.batch,
               "steps": a.steps, "samples": n, "seconds": dt, "samples_per_second": n / dt,
               "model_table_bytes": full,
               "per_rank": [dict(zip(("table_bytes", "optimizer_bytes", "max_rss", "rss_after_data"), row,
                                     strict=True)) for row in mine.tolist()],
               "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
        print(json.dumps(rec), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")
    distributed.cleanup()


def sweep(a: argparse.Namespace) -> None:
    rows = [int(float(x)) for x in a.rows.split(",")]
    results = []
    for r in rows:
        for path in a.paths.split(","):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}",
                   __file__, "--worker", "--path", path, "--users", str(r), "--items", str(r),
                   "--interactions", str(a.interactions), "--batch", str(a.batch), "--steps", str(a.steps),
                   "--factors", str(a.factors), "--layers", a.layers, "--device", a.device,
                   "--sharding", a.sharding, "--threads", str(a.threads)]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode or not lines:
                print(f"rows {r} {path}: failed\n{res.stderr[-3000:]}", file=sys.stderr)
                continue
            rec = json.loads(lines[-1])
            results.append(rec)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            mb = 1 << 20
            per = " | ".join(f"r{k}: {p['table_bytes'] / mb:.0f}+{p['optimizer_bytes'] / mb:.0f} MB, "
                             f"RSS {p['max_rss'] / mb:.0f} MB" for k, p in enumerate(rec["per_rank"]))
            print(f"rows {r:>9,} {path:>7}: tables {rec['model_table_bytes'] / mb:.0f} MB | {per} | "
                  f"{rec['samples_per_second'] / 1e3:.0f}k samples/s | {rec['uptime']}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="one run (under torchrun)")
    p.add_argument("--path", default="sharded", choices=["sharded", "ddp"])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--rows", default="100000,300000,1000000", help="sweep: rows of each table")
    p.add_argument("--paths", default="ddp,sharded", help="sweep: paths")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--interactions", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=16384, help="samples per rank and step")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--factors", type=int, default=8)
    p.add_argument("--layers", default="64,32,16,8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sharding", default="table_wise")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    a.layers_list = [int(x) for x in a.layers.split(",")]
    worker(a) if a.worker else sweep(a)


if __name__ == "__main__":
    main()
