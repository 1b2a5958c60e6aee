"""Negative-sampling speed: samples/s for whole ML-1M epochs (994,169 interactions x (1 + 4)).

    NCF_DATA_DIR=../shared/data nice python benchmarks/sampling.py [--epochs 5] [--neg 4] [--plot out.png]

Prints, per mode, the median seconds per epoch and samples/s, next to an in-run reference:
the least work any sampler must do for the same epoch (one uniform draw per negative and one
random permutation of all samples, no rejection). The ratio to that reference is the figure to
compare across machines; absolute times move with the load on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.sampling import NegativeSampler


def _time(fn, repeats: int, label: str) -> list[float]:
    fn(0)  # warm-up: allocator, lazy init
    out = []
    quiet = not Console().is_terminal
    for e in track(range(1, repeats + 1), description=label, transient=True, disable=quiet):
        t = time.perf_counter()
        fn(e)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="ncf-ml-1m")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per mode (after one warm-up)")
    ap.add_argument("--neg", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--plot", default=None, help="write a PNG of seconds per epoch")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    t = time.perf_counter()
    ds = load_dataset(DataConfig(source=args.source, valid=False))
    train = ds.train.matrix
    console.print(f"{args.source}: {train.shape[0]:,} users x {train.shape[1]:,} items, {train.nnz:,} training "
                  f"interactions (loaded in {time.perf_counter() - t:.1f} s); torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads")
    modes = {}
    for label, dense_limit in (("dense bitmap", 1 << 30), ("sorted keys", 0)):
        s = NegativeSampler(train, n_neg=args.neg, seed=0, dense_limit=dense_limit)
        n = len(s.epoch_pointwise(0)[0])
        modes[f"pointwise, {label}"] = (n, _time(s.epoch_pointwise, args.epochs, f"pointwise {label}"))
    s = NegativeSampler(train, n_neg=args.neg, seed=0)
    modes["pairwise, dense bitmap"] = (len(s.epoch_pairwise(0)[0]), _time(s.epoch_pairwise, args.epochs, "pairwise"))
    n_point = modes["pointwise, dense bitmap"][0]
    n_neg_samples = n_point - train.nnz

    def reference(e: int) -> None:
        g = torch.Generator().manual_seed(e)
        torch.randint(0, train.shape[1], (n_neg_samples,), generator=g, dtype=torch.int32)
        torch.randperm(n_point, generator=g)

    ref = statistics.median(_time(reference, args.epochs, "reference"))
    table = Table(title=f"one epoch, {args.neg} negatives per interaction (median of {args.epochs})")
    for col in ("mode", "samples", "seconds", "samples/s", "x reference"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for name, (n, secs) in modes.items():
        med = statistics.median(secs)
        table.add_row(name, f"{n:,}", f"{med:.3f}", f"{n / med / 1e6:.2f} M", f"{med / ref:.1f}")
    table.add_row("reference: draws + permutation only", f"{n_point:,}", f"{ref:.3f}", f"{n_point / ref / 1e6:.2f} M",
                  "1.0")
    console.print(table)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = [*modes, "reference"]
        values = [statistics.median(v[1]) for v in modes.values()] + [ref]
        ax.barh(names, values, color=["tab:blue"] * len(modes) + ["tab:gray"])
        ax.axvline(1.0, color="tab:red", ls="--", lw=1, label="target: 1 s")
        ax.set_xlabel(f"seconds per epoch ({args.source}, {args.neg} negatives)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        console.print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
