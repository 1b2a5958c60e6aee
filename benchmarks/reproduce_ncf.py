"""Reproduce the NCF paper's ML-1M table (and the same protocol on ML-100K).

Runs GMF, MLP and NeuMF at factors 8 and 64 (NeuMF with pre-training at 64) on the public
NCF split (``ncf-ml-1m``: test item among itself + the published 99 negatives), choosing
the epoch on the validation holdout only, and prints a markdown table with the paper's
figures beside ours. Each run is an ordinary ``ncf train`` run directory under ``--out``.

    python benchmarks/reproduce_ncf.py --out runs/reproduce            # everything
    python benchmarks/reproduce_ncf.py --only neumf-8 --dataset ml-100k  # one configuration

Reads data from $NCF_DATA_DIR (default ../shared/data); exits with a message where absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the paper's Tables 2-4 (HR@10, NDCG@10) on ML-1M
PAPER = {
    "gmf-8": None,
    "mlp-8": (0.671, 0.399),
    "neumf-8": (0.688, 0.410),
    "gmf-64": None,
    "mlp-64": (0.702, 0.426),
    "neumf-64": (0.705, 0.426),
    "neumf-64-pretrain": (0.730, 0.447),
}


def configs() -> dict[str, dict]:
    tower = {8: (64, 32, 16, 8), 64: (512, 256, 128, 64)}
    out = {}
    for f in (8, 64):
        out[f"gmf-{f}"] = {"model": "gmf", "factors": f}
        out[f"mlp-{f}"] = {"model": "mlp", "layers": tower[f]}
        out[f"neumf-{f}"] = {"model": "neumf", "factors": f, "layers": tower[f]}
    out["neumf-64-pretrain"] = {"model": "neumf", "factors": 64, "layers": tower[64], "pretrain": True}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ncf-ml-1m")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--only", default=None, help="comma-separated names, e.g. gmf-8,neumf-8")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=0, help="0: ncf's auto default")
    p.add_argument("--lr", type=float, default=0.0, help="0: ncf's auto default")
    p.add_argument("--json", default=None, help="also write the results table as JSON here")
    args = p.parse_args()

    if "NCF_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["NCF_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
    from ncf.config import TrainConfig
    from ncf.data.datasets import DataConfig, load_dataset
    from ncf.data.readers import DataError
    from ncf.train.run import train

    try:
        dataset = load_dataset(DataConfig(source=args.dataset))
    except DataError as e:
        sys.exit(f"skipped: {e}")
    wanted = configs()
    if args.only:
        names = args.only.split(",")
        unknown = [n for n in names if n not in wanted]
        if unknown:
            sys.exit(f"unknown configuration(s) {unknown}; known: {', '.join(wanted)}")
        wanted = {n: wanted[n] for n in names}
    rows = []
    for name, spec in wanted.items():
        cfg = TrainConfig(epochs=args.epochs, device=args.device, batch_size=args.batch_size, lr=args.lr, **spec)
        out = Path(args.out) / f"{args.dataset}-{name}"
        print(f"== {name}: ncf train --dataset {args.dataset} {cli_flags(spec, args)} --out {out}",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        s = train(DataConfig(source=args.dataset), cfg, out, dataset=dataset, overwrite=True)
        wall = time.perf_counter() - t0
        rows.append({"name": name, "best_epoch": s["best_epoch"], "valid": s["valid"], "test": s["test"],
                     "wall_seconds": wall, "device": s["device"], "command": f"ncf train --dataset {args.dataset} "
                     f"{cli_flags(spec, args)} --out {out}"})
        print(table(rows, args.dataset), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def cli_flags(spec: dict, args) -> str:
    parts = [f"--model {spec['model']}"]
    if "factors" in spec:
        parts.append(f"--factors {spec['factors']}")
    if "layers" in spec:
        parts.append("--layers " + ",".join(map(str, spec["layers"])))
    if spec.get("pretrain"):
        parts.append("--pretrain")
    parts.append(f"--epochs {args.epochs}")
    if args.batch_size:
        parts.append(f"--batch-size {args.batch_size}")
    if args.lr:
        parts.append(f"--lr {args.lr}")
    return " ".join(parts)


def table(rows: list[dict], dataset: str) -> str:
    lines = [
        f"| model ({dataset}) | valid HR@10 | test HR@10 | test NDCG@10 | paper HR@10 / NDCG@10 "
        "| best epoch | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        paper = PAPER.get(r["name"]) if dataset == "ncf-ml-1m" else None
        ref = f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else "-"
        lines.append(
            f"| {r['name']} | {r['valid']['hr@10']:.4f} | {r['test']['hr@10']:.4f} | {r['test']['ndcg@10']:.4f} "
            f"| {ref} | {r['best_epoch']} | {r['wall_seconds']:.0f} ({r['device']}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
