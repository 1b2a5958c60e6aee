"""Peak memory per rank of the data stage of a --shard-tables run: the whole file vs the rank's users.

    nice -n 10 python benchmarks/rankdata.py --rows 20000000 --nproc 2   # writes /tmp/ncf-rankdata-20000000.csv once
    torchrun --nproc-per-node 2 benchmarks/rankdata.py --worker --path rank --file F

Each path runs in its own torchrun launch (so each rank's peak RSS is its own), on a synthetic
ratings CSV shaped like MovieLens 20M (``--users`` 138,493, ``--items`` 26,744, ``--rows``
interactions: users uniform, items by a power law, so some (user, item) rows repeat, as in
real logs). The data stage is what a rank does before its first step: the dataset and its
user-partitioned sampler (``ncf.data.partition.UserShardSampler``).

- ``whole``: the path before ranks read their own users: every rank reads and splits the whole
  file (``load_dataset``) and keeps its users' sampler (and, in the trainer, the dataset).
- ``rank``: ``ncf.data.rankload.load_rank_dataset``: a streaming pass for the id maps and row
  counts, a streaming pass keeping the rank's rows, the split per user, one all-reduce (and a
  third pass where repeated rows moved the ranges).

Per rank it reports the RSS before the stage (after importing torch and joining the process
group), the peak RSS (``ru_maxrss``), its growth, the seconds, and the training rows it holds.
Both paths use per-user split draws, so they build the same rank datasets.
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
from pathlib import Path

import numpy as np
import torch


def write_ratings(path: Path, rows: int, users: int, items: int, seed: int = 0, block: int = 1_000_000) -> None:
    """``user,item,rating,timestamp`` with a header, written a block at a time."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    pop /= pop.sum()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("user,item,rating,timestamp\n")
        for lo in range(0, rows, block):
            n = min(block, rows - lo)
            u = rng.integers(1, users + 1, n)
            i = rng.choice(items, n, p=pop) + 1
            r = rng.integers(1, 11, n) / 2
            t = rng.integers(789_652_009, 1_427_784_002, n)
            np.savetxt(f, np.column_stack([u, i, r, t]), fmt=["%d", "%d", "%.1f", "%d"], delimiter=",")
    os.replace(tmp, path)


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(a: argparse.Namespace) -> None:
    import torch.distributed as dist

    from ncf.data.datasets import DataConfig, load_dataset
    from ncf.data.partition import UserShardSampler, user_bounds
    from ncf.data.rankload import load_rank_dataset
    from ncf.train import distributed

    device = distributed.setup(torch.device("cpu"))
    rank, world = distributed.rank(), distributed.world()
    cfg = DataConfig(source=a.file, split_draws="per_user")
    distributed.barrier()
    rss0 = _rss()
    t0 = time.perf_counter()
    if a.path == "whole":
        ds = load_dataset(cfg)
        counts = np.diff(ds.train.matrix.indptr)
        bounds = user_bounds(counts, world)
        sampler = UserShardSampler.for_rank(ds.train.matrix, bounds, rank, 4, 0)
    else:
        ds = load_rank_dataset(cfg, rank, world, distributed.array_all_sum(device))
        sampler = UserShardSampler.for_rank(ds.train.matrix, ds.part.bounds, rank, 4, 0, counts=ds.part.train_counts)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mine = torch.zeros(world, 5, dtype=torch.int64)
    mine[rank] = torch.tensor([rss0, peak, int(dt * 1000), sampler.nnz, ds.train.matrix.nnz])
    if dist.is_initialized():
        dist.all_reduce(mine)
    if rank == 0:
        rec = {"path": a.path, "world": world, "file": a.file, "file_bytes": os.path.getsize(a.file),
               "interactions": ds.n_interactions, "train": ds.train_nnz,
               "per_rank": [{"rss_before": r[0], "peak_rss": r[1], "seconds": r[2] / 1000, "train_rows": r[3],
                             "train_rows_held": r[4]} for r in mine.tolist()],
               "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
        print(json.dumps(rec), flush=True)
    distributed.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="one path (under torchrun)")
    p.add_argument("--path", default="rank", choices=["whole", "rank"])
    p.add_argument("--paths", default="whole,rank")
    p.add_argument("--file", default="", help="ratings CSV (default: /tmp/ncf-rankdata-ROWS.csv, written once)")
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--users", type=int, default=138_493)
    p.add_argument("--items", type=int, default=26_744)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    path = Path(a.file or f"/tmp/ncf-rankdata-{a.rows}.csv")
    if not path.exists():
        t0 = time.perf_counter()
        write_ratings(path, a.rows, a.users, a.items)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    mb = 1 << 20
    for which in a.paths.split(","):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}",
               __file__, "--worker", "--path", which, "--file", str(path)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if res.returncode or not lines:
            print(f"{which}: failed\n{res.stderr[-3000:]}", file=sys.stderr)
            continue
        rec = json.loads(lines[-1])
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")
        per = " | ".join(f"r{k}: peak {r['peak_rss'] / mb:,.0f} MiB (+{(r['peak_rss'] - r['rss_before']) / mb:,.0f}), "
                         f"{r['seconds']:.0f} s, {r['train_rows']:,} rows" for k, r in enumerate(rec["per_rank"]))
        print(f"{which:>5}: {rec['interactions']:,} interactions | {per} | {rec['uptime']}", flush=True)


if __name__ == "__main__":
    main()
