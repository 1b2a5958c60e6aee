"""Does an item2vec warm start help GMF / NeuMF? Random vs item2vec-initialised item
embeddings, same seeds, same everything else; validation and test (sampled 1+99).

    nice python benchmarks/item2vec_warmstart.py --dataset ml-100k --factors 32 \
        --i2v-param window=0 --i2v-param epochs=5 --i2v-param recent=3 --seeds 0,1,2 --out /tmp/warm100k

Writes one run directory per (model, init, seed) under ``--out``, ``results.json`` and
``warmstart.png`` (validation HR@10 per epoch, random vs warm, mean over seeds).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ncf.cli.train import _parse_params
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.train import warmstart
from ncf.train.run import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--models", default="gmf,neumf")
    ap.add_argument("--factors", type=int, default=32)
    ap.add_argument("--layers", default="64,32,16,8")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded machine)")
    ap.add_argument("--i2v-param", action="append", default=[], help="item2vec KEY=VALUE (repeatable)")
    ap.add_argument("--i2v-run", default=None, help="reuse this item2vec run instead of training one")
    ap.add_argument("--inits", default="random,item2vec",
                    help="random | item2vec (vectors as they are) | item2vec-rescaled (to the random init's norm)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    console = Console(stderr=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dcfg = DataConfig(source=args.dataset)
    ds = load_dataset(dcfg)
    i2v = Path(args.i2v_run) if args.i2v_run else out / "item2vec"
    if not (i2v / "summary.json").exists():
        params = {**_parse_params(args.i2v_param), "vector_size": args.factors}
        console.print(f"[bold]item2vec {params}")
        train(dcfg, TrainConfig(model="item2vec", params=params), i2v, dataset=ds, overwrite=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    inits = args.inits.split(",")
    real_init = warmstart.init_item_embeddings
    results = []
    for model in args.models.split(","):
        for init in inits:
            for seed in seeds:
                run = out / f"{model}-{init}-s{seed}"
                if (run / "summary.json").exists():
                    s = json.loads((run / "summary.json").read_text())
                else:
                    console.print(f"[bold]{model} {init} seed {seed}")
                    cfg = TrainConfig(model=model, factors=args.factors, layers=args.layers, epochs=args.epochs,
                                      seed=seed, device="cpu", threads=args.threads)
                    warmstart.init_item_embeddings = functools.partial(real_init, rescale=init == "item2vec-rescaled")
                    s = train(dcfg, cfg, run, dataset=ds, init_items=None if init == "random" else i2v, overwrite=True)
                curve = [json.loads(ln)["valid"]["hr@10"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
                results.append({"model": model, "init": init, "seed": seed, "valid": s["valid"], "test": s["test"],
                                "best_epoch": s["best_epoch"], "curve": curve})
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = Table(title=f"warm start on {args.dataset} (factors {args.factors}; mean ± sd over seeds {args.seeds})")
    for col in ("model", "init", "valid hr@10", "valid ndcg@10", "test hr@10", "test ndcg@10", "best epoch"):
        table.add_column(col)
    for model in args.models.split(","):
        for init in inits:
            rs = [r for r in results if r["model"] == model and r["init"] == init]

            def ms(split, key, rs=rs):
                v = np.array([r[split][key] for r in rs])
                return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}"

            table.add_row(model, init, ms("valid", "hr@10"), ms("valid", "ndcg@10"), ms("test", "hr@10"),
                          ms("test", "ndcg@10"), ", ".join(str(r["best_epoch"]) for r in rs))
    Console().print(table)
    plot(results, args.models.split(","), inits, out / "warmstart.png", args.dataset)


def plot(results, models, inits, path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        colours = {"random": "tab:blue", "item2vec": "tab:orange", "item2vec-rescaled": "tab:green"}
        for init in inits:
            colour = colours[init]
            curves = [r["curve"] for r in results if r["model"] == model and r["init"] == init]
            n = min(len(c) for c in curves)  # early stopping: the epochs every seed ran
            mean = np.mean([c[:n] for c in curves], axis=0)
            for c in curves:
                ax.plot(range(1, len(c) + 1), c, color=colour, alpha=0.25, lw=1)
            ax.plot(range(1, n + 1), mean, color=colour, lw=2, label=f"{init} init (mean)")
        ax.set_title(f"{model} on {dataset}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation HR@10 (sampled)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
