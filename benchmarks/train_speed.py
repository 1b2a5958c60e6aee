"""Training and evaluation speed of ``ncf train`` at its default configuration, against the
same NeuMF math in plain PyTorch at the paper's batch of 256, measured in the same run.

    python benchmarks/train_speed.py                       # ncf-ml-1m, NeuMF, 20 epochs
    python benchmarks/train_speed.py --epochs 3 --ref-steps 200   # quicker
    python benchmarks/train_speed.py --device cuda         # everything on the GPU

Prints one table: samples/s and seconds per epoch of ``ncf train`` end to end (sampling,
batching, optimizer steps and per-epoch validation included; data loading and the final
test evaluation reported apart), the plain-PyTorch reference (timed before and after, its
batches drawn beforehand, so sampling is not charged to it), the ratio, evaluation times
for both protocols, test HR@10, and peak memory. ``--json`` and ``--plot`` save them.
On a machine whose cores are shared, absolute figures fall; the ratio is the figure to trust.
"""

from __future__ import annotations

# ruff: noqa: E402  (the user's OpenMP wait policy is read before `import ncf` sets its default)
# isort: off
import os

_USER_OMP_WAIT = os.environ.get("OMP_WAIT_POLICY")
import ncf  # noqa: F401  (before torch: sets the OpenMP wait policy, see src/ncf/__init__.py)
# isort: on

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ncf.checkpoint import load_model
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.eval.evaluator import evaluate
from ncf.train.run import train
from ncf.train.trainer import resolve_device

console = Console(stderr=True)
_shared = Path(__file__).resolve().parents[2] / "shared" / "data"  # as tests/conftest.py: ../shared/data
if "NCF_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["NCF_DATA_DIR"] = str(_shared)


def reference_rate(n_users: int, n_items: int, device: torch.device, steps: int, batch: int = 256) -> float:
    """Samples/s of plain-PyTorch NeuMF training steps (``plain_reference.py``) at ``batch``, in a
    process of its own with PyTorch's own threading defaults: the OpenMP wait policy that
    ``import ncf`` set for this process is removed from its environment (unless the user set it)."""
    env = dict(os.environ)
    if _USER_OMP_WAIT is None:
        env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, str(Path(__file__).with_name("plain_reference.py")), "--users", str(n_users),
           "--items", str(n_items), "--batch", str(batch), "--steps", str(steps), "--device", device.type]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"plain reference failed: {res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["omp_wait_policy"] is not None and _USER_OMP_WAIT is None:
        raise RuntimeError("the reference inherited OMP_WAIT_POLICY: it would not run at its own best")
    return out["samples_per_s"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ncf-ml-1m")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    ap.add_argument("--ref-steps", type=int, default=400, help="timed steps of the plain-PyTorch reference")
    ap.add_argument("--ref-big-batch", type=int, default=65536,
                    help="the reference again at this batch (plain PyTorch at its own best batch size)")
    ap.add_argument("--ref-big-steps", type=int, default=30, help="timed steps at --ref-big-batch")
    ap.add_argument("--param", action="append", default=[], help="TrainConfig KEY=VALUE override (repeatable)")
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    ap.add_argument("--plot", type=Path, help="write a PNG bar chart here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    overrides = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v
                 for k, v in (p.split("=", 1) for p in args.param)}
    cfg = TrainConfig(**{"epochs": args.epochs, "device": args.device, "threads": args.threads, **overrides})
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    ds = load_dataset(DataConfig(source=args.dataset))
    t_load = time.perf_counter() - t0
    cfg = cfg.resolved(ds.train.nnz)  # "auto" batch size and learning rate, as `ncf train` does
    console.print(f"{ds.name}: {ds.n_users} users, {ds.n_items} items, {ds.train.nnz} training interactions "
                  f"(loaded in {t_load:.1f}s); device {_device_name(device)}; {torch.get_num_threads()} threads; "
                  f"load average {load0:.1f}")

    console.print(f"plain PyTorch reference, batch 256, {args.ref_steps} steps ...")
    ref_before = reference_rate(ds.n_users, ds.n_items, device, args.ref_steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    console.print(f"ncf train --dataset {args.dataset} --model {cfg.model} --epochs {cfg.epochs} "
                  f"(batch {cfg.batch_size}, lr {cfg.lr}) ...")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = train(DataConfig(source=args.dataset), cfg, Path(tmp) / "run", dataset=ds, progress=False)
        t_cmd = time.perf_counter() - t0
        records = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        model = load_model(Path(tmp) / "run", device=device).eval()  # the best-validation weights
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    ref_after = reference_rate(ds.n_users, ds.n_items, device, args.ref_steps)
    ref = (ref_before + ref_after) / 2
    console.print(f"plain PyTorch reference, batch {args.ref_big_batch}, {args.ref_big_steps} steps ...")
    ref_big = reference_rate(ds.n_users, ds.n_items, device, args.ref_big_steps, args.ref_big_batch)

    samples = sum(r["samples"] for r in records)
    epoch_s = sum(r["seconds"] for r in records)
    train_s = sum(r["train_seconds"] for r in records)
    rate = samples / epoch_s

    seen = ds.seen(include_valid=True)
    evaluate(model, ds.test, "sampled")  # warm-up
    t_sampled = _timed(lambda: evaluate(model, ds.test, "sampled"))
    t_full = _timed(lambda: evaluate(model, ds.test, "full", seen=seen))
    load1 = os.getloadavg()[0]

    res = {
        "dataset": ds.name, "device": _device_name(device), "threads": torch.get_num_threads(),
        "load_average": [round(load0, 2), round(load1, 2)], "epochs": len(records),
        "batch_size": cfg.batch_size, "lr": cfg.lr,
        "samples_per_s": rate, "train_only_samples_per_s": samples / train_s,
        "seconds_per_epoch": epoch_s / len(records), "command_seconds": t_cmd, "data_load_seconds": t_load,
        "reference_samples_per_s": ref, "reference_before_after": [ref_before, ref_after],
        "ratio": rate / ref, "reference_big_batch": args.ref_big_batch, "reference_big_samples_per_s": ref_big,
        "ratio_big": rate / ref_big, "eval_sampled_s": t_sampled, "eval_full_s": t_full,
        "eval_users": len(ds.test), "n_items": ds.n_items,
        "test_hr@10": summary["test"]["hr@10"], "test_ndcg@10": summary["test"]["ndcg@10"],
        "best_epoch": summary["best_epoch"], "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu_peak,
    }
    _print(res, args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    if args.plot:
        _plot(res, args.plot)
    return res


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def _print(r: dict, args) -> None:
    t = Table(title=f"training speed: {r['dataset']}, {r['device']}, {r['threads']} threads, "
                    f"load average {r['load_average'][0]} -> {r['load_average'][1]}")
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        (f"ncf train, {r['epochs']} epochs, batch {r['batch_size']}: samples/s end to end",
         f"{r['samples_per_s']:,.0f}"),
        ("  samples/s, training steps only", f"{r['train_only_samples_per_s']:,.0f}"),
        ("  seconds per epoch (with validation)", f"{r['seconds_per_epoch']:.2f}"),
        ("  whole run (with final test evaluation)", f"{r['command_seconds']:.1f} s"),
        ("  test HR@10 / NDCG@10 (best validation epoch)", f"{r['test_hr@10']:.4f} / {r['test_ndcg@10']:.4f}"),
        ("plain PyTorch NeuMF, batch 256: samples/s (before / after)",
         f"{r['reference_before_after'][0]:,.0f} / {r['reference_before_after'][1]:,.0f}"),
        ("ratio ncf / reference at batch 256", f"{r['ratio']:.1f}x"),
        (f"plain PyTorch NeuMF, batch {r['reference_big_batch']:,} (model math only): samples/s",
         f"{r['reference_big_samples_per_s']:,.0f}"),
        (f"ratio ncf / reference at batch {r['reference_big_batch']:,}", f"{r['ratio_big']:.2f}x"),
        (f"evaluation, sampled (1 + 99), {r['eval_users']} users", f"{r['eval_sampled_s']:.3f} s"),
        (f"evaluation, full ({r['eval_users']} users x {r['n_items']} items)", f"{r['eval_full_s']:.3f} s"),
        ("peak memory (RSS, whole process)", f"{r['peak_rss_mb']:,.0f} MiB"),
    ]
    if r["peak_gpu_mb"] is not None:
        rows.append(("peak GPU memory (allocated)", f"{r['peak_gpu_mb']:,.0f} MiB"))
    for a, b in rows:
        t.add_row(a, b)
    Console().print(t)
    Console().print(f"command: python benchmarks/train_speed.py {' '.join(sys.argv[1:])}  "
                    f"({time.strftime('%Y-%m-%d %H:%M')})")


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    labels = ["plain PyTorch\nbatch 256", f"ncf train\nbatch {r['batch_size']}"]
    vals = [r["reference_samples_per_s"], r["samples_per_s"]]
    ax.barh(labels, vals, color=["#999999", "#1f77b4"])
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v / 1e3:,.0f}k/s", va="center")
    ax.set_xlabel("training samples per second (end to end for ncf train)")
    ax.set_title(f"NeuMF on {r['dataset']}, {r['device']}: {r['ratio']:.0f}x", fontsize=10)
    ax.set_xlim(0, max(vals) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
