"""How training time and memory grow with the data: synthetic implicit feedback with power-law
item popularity at 1M, 10M and 50M interactions, one NeuMF epoch (default configuration)
each, every size in its own process so that its peak memory (RSS) is its own.

    python benchmarks/scale.py                          # 1M, 10M, 50M interactions
    python benchmarks/scale.py --sizes 1e5,1e6 --fraction 0.2   # quicker: a fifth of each epoch

Users: one per 50 interactions on average (log-normal activity); items: one per 500
interactions (at least 1,000), drawn with probability proportional to rank^-0.9. Each size
trains ``--fraction`` of one epoch (4 negatives per interaction) and reports seconds per
epoch (the steps extrapolated from that fraction when it is below 1; the epoch's permutation
is made whole either way), samples/s, peak RSS, and the ratios between consecutive sizes;
``--plot`` draws them. Where the sizes took different paths under ``--sparse auto`` (the
smallest one's tables fit in a batch: dense path), those sizes are also trained on the sparse
path, and the ratios of the same computation are printed beside. Where an epoch's time goes
is printed too: the permutation, the milliseconds of a step and of the optimizer update inside
it.
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
import scipy.sparse as sp


def synthetic(n_interactions: int, seed: int = 0) -> sp.csr_matrix:
    """A users x items 0/1 CSR with about ``n_interactions`` distinct entries."""
    rng = np.random.default_rng(seed)
    n_users = max(100, n_interactions // 50)
    n_items = max(1_000, n_interactions // 500)
    activity = rng.lognormal(0.0, 1.0, n_users)
    popularity = np.arange(1, n_items + 1, dtype=np.float64) ** -0.9
    cdf = np.cumsum(popularity / popularity.sum())
    keys = np.zeros(0, dtype=np.int64)
    while len(keys) < n_interactions:  # popular items repeat: draw until enough distinct pairs
        want = int((n_interactions - len(keys)) * 1.3) + 1000
        degrees = np.maximum(1, np.round(activity / activity.sum() * want)).astype(np.int64)
        parts = []
        for lo in range(0, n_users, 1 << 16):  # chunks of users: bounded temporaries
            d = degrees[lo: lo + (1 << 16)]
            users = np.repeat(np.arange(lo, lo + len(d), dtype=np.int64), d)
            items = np.minimum(np.searchsorted(cdf, rng.random(len(users))), n_items - 1)
            parts.append(users * n_items + items)
        keys = np.unique(np.concatenate([keys, *parts]))
    if len(keys) > n_interactions:  # drop the surplus at random, keep the order
        keep = np.sort(rng.permutation(len(keys))[:n_interactions])
        keys = keys[keep]
    rows, cols = keys // n_items, (keys % n_items).astype(np.int32)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), cols, indptr), shape=(n_users, n_items))


def child(n: int, fraction: float, device: str, threads: int, sparse: str) -> dict:
    import torch

    from ncf.config import TrainConfig
    from ncf.data.interactions import IdMap, Interactions
    from ncf.data.split import Dataset, HoldOut
    from ncf.models.neumf import NeuMF
    from ncf.train.trainer import Trainer

    t0 = time.perf_counter()
    m = synthetic(n)
    t_gen = time.perf_counter() - t0
    train = Interactions(m, IdMap(np.arange(m.shape[0])), IdMap(np.arange(m.shape[1])))
    empty = HoldOut(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 1), np.int64))
    ds = Dataset("synthetic", train, empty, None, m.nnz)
    cfg = TrainConfig(epochs=1, device=device, threads=threads, sparse=sparse)
    torch.manual_seed(0)
    trainer = Trainer(NeuMF(m.shape[0], m.shape[1]), ds, cfg, None, progress=False)
    n_samples = trainer.sampler.n_samples()
    steps = max(1, round(trainer.sampler.n_batches(trainer.cfg.batch_size) * fraction))  # batch: auto
    spent = {"plan": 0.0, "optimizer": 0.0}  # where the epoch's time goes (CPU: no device sync needed)

    def timed(name, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - t
            return out
        return run

    trainer.sampler.plan = timed("plan", trainer.sampler.plan)
    trainer.opt.step = timed("optimizer", trainer.opt.step)
    t0 = time.perf_counter()
    _, done = trainer.train_epoch(1, max_steps=steps)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0  # includes the epoch's permutation (its plan)
    # the permutation is made once for the whole epoch; the steps scale with the fraction trained
    epoch_s = spent["plan"] + (elapsed - spent["plan"]) * n_samples / done
    return {
        "interactions": int(m.nnz), "users": m.shape[0], "items": m.shape[1], "samples_per_epoch": n_samples,
        "sparse_gradients": trainer.sparse, "batch_size": trainer.cfg.batch_size, "workers": trainer.workers,
        "fraction": done / n_samples, "steps": steps,
        "seconds_per_epoch": epoch_s, "samples_per_s": n_samples / epoch_s,
        "plan_seconds": spent["plan"], "step_ms": (elapsed - spent["plan"]) / steps * 1e3,
        "optimizer_step_ms": spent["optimizer"] / steps * 1e3 if trainer.device.type == "cpu" else None,
        "generate_seconds": t_gen, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if trainer.device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7,5e7", help="interactions, comma-separated")
    ap.add_argument("--fraction", type=float, default=1.0, help="share of each epoch to train (0, 1]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sparse", default="auto", help="sparse embedding gradients: auto | on | off")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        ap.error("--fraction must be in (0, 1]")
    if args.child:
        print(json.dumps(child(args.child, args.fraction, args.device, args.threads, args.sparse)))
        return []

    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=170)  # a log keeps the whole table
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    load0 = os.getloadavg()[0]

    def run(n: int, sparse: str) -> dict:
        console.print(f"[bold]{n:,} interactions[/] (own process{', sparse path' if sparse == 'on' else ''}) ...")
        cmd = [sys.executable, __file__, "--child", str(n), "--fraction", str(args.fraction),
               "--device", args.device, "--threads", str(args.threads), "--sparse", sparse]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"size {n} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        opt = f", optimizer {r['optimizer_step_ms']:.1f} ms of it" if r["optimizer_step_ms"] is not None else ""
        console.print(f"  {r['seconds_per_epoch']:.1f} s/epoch, {r['samples_per_s'] / 1e6:.2f}M samples/s, "
                      f"peak RSS {r['peak_rss_mb']:,.0f} MiB; permutation {r['plan_seconds']:.2f} s, "
                      f"a step of {r['batch_size']:,} {r['step_ms']:.1f} ms{opt}")
        return r

    results = [run(n, args.sparse) for n in sizes]
    # "auto" takes the dense path (first MLP layer on the tables, dense Adam) where the tables
    # are smaller than a batch: a cheaper computation, not the same one. Where the sizes took
    # different paths, the dense ones are trained again on the sparse path, for ratios of like
    # with like.
    if args.sparse == "auto" and len({r["sparse_gradients"] for r in results}) > 1:
        for r in results:
            if not r["sparse_gradients"]:
                r["sparse_path_run"] = run(r["interactions"], "on")
            r["sparse_path_seconds"] = r.get("sparse_path_run", r)["seconds_per_epoch"]
    same = "sparse_path_seconds" in results[0]
    t = Table(title=f"one NeuMF epoch on synthetic power-law data ({args.device}; load average "
                    f"{load0:.1f} -> {os.getloadavg()[0]:.1f}; fraction of each epoch trained {args.fraction})")
    columns = ["interactions", "users", "items", "sparse grads", "s/epoch", "samples/s", "peak RSS MiB",
               "x interactions", "x s/epoch", "x memory"] + (["s/epoch sparse path", "x (sparse path)"] if same else [])
    for c in columns:
        t.add_column(c, justify="right")
    ratios = []
    for k, r in enumerate(results):
        prev = results[k - 1] if k else None
        x = {key: r[key] / prev[key] for key in ("interactions", "seconds_per_epoch", "peak_rss_mb")} if prev else {}
        if prev and same:
            x["sparse_path"] = r["sparse_path_seconds"] / prev["sparse_path_seconds"]
        ratios.append(x)
        cells = [f"{r['interactions']:,}", f"{r['users']:,}", f"{r['items']:,}", str(r["sparse_gradients"]),
                 f"{r['seconds_per_epoch']:.1f}", f"{r['samples_per_s'] / 1e6:.2f}M", f"{r['peak_rss_mb']:,.0f}"]
        cells += [f"{x[key]:.2f}" if x else "" for key in ("interactions", "seconds_per_epoch", "peak_rss_mb")]
        if same:
            cells += [f"{r['sparse_path_seconds']:.1f}", f"{x['sparse_path']:.2f}" if x else ""]
        t.add_row(*cells)
    console.print(t)
    for r, x in zip(results[1:], ratios[1:], strict=True):
        like = f"; same (sparse) path {x['sparse_path']:.2f}x" if same else ""
        console.print(f"{r['interactions']:,}: {x['interactions']:.2f}x the interactions -> "
                      f"{x['seconds_per_epoch']:.2f}x the seconds an epoch{like}, {x['peak_rss_mb']:.2f}x the memory")
    console.print(f"command: python benchmarks/scale.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M')})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        _plot(results, args.plot)
    return results


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["interactions"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].loglog(x, [r["seconds_per_epoch"] for r in results], marker="o", label="auto")
    if "sparse_path_seconds" in results[0]:
        axes[0].loglog(x, [r["sparse_path_seconds"] for r in results], marker="s", ls="--", label="sparse path")
    base = results[0].get("sparse_path_seconds", results[0]["seconds_per_epoch"])  # like with like
    axes[0].loglog(x, [base * n / x[0] for n in x], color="gray", lw=1, ls=":", label="linear from the first point")
    axes[0].legend(fontsize=8)
    axes[0].set_ylabel("seconds per epoch")
    axes[1].loglog(x, [r["peak_rss_mb"] / 1024 for r in results], marker="o")
    axes[1].axhline(8, color="gray", ls="--", lw=1)
    axes[1].set_ylabel("peak RSS (GiB)")
    for ax in axes:
        ax.set_xlabel("interactions")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("NeuMF, one epoch, synthetic power-law data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
