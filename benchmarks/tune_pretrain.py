"""Choose NeuMF-with-pre-training hyperparameters on the validation holdout only.

The paper's NeuMF with pre-training has three stages: GMF and MLP trained alone, fused with
``alpha``, then the fused model fine-tuned (plain SGD in the paper). Each stage has its own
hyperparameters, and each is chosen here by validation NDCG@10 of the best epoch:

1. a grid of GMF runs and a grid of MLP runs (learning rate, L2, dropout, negatives),
2. the best GMF and the best MLP fused, and a grid of fine-tunings (optimizer, learning rate);
   the fused model before fine-tuning competes as epoch 0, so fine-tuning is kept only where
   validation says it helps.

Test metrics are read from each run's summary (ncf computes them for the best validation
epoch) but take no part in any choice; the printed table gives test for the chosen
configuration of each stage. Every run is an ordinary ``ncf train`` run directory, started as
its own process, ``--jobs`` at a time. A run that finished with the same command under ``--out``
is reused, so a grid can be extended (or continued on another machine) without redoing it.

    NCF_DATA_DIR=../shared/data python benchmarks/tune_pretrain.py --device cuda --jobs 4 \\
        --out /tmp/tune --json tune.json

The defaults are the factor-64 configuration of the paper (GMF 64, MLP 512-256-128-64).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",")]


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def neg_flags(neg: int) -> tuple[list[str], str, str]:
    """(flags, name part, directory suffix) for a negatives count; the default 4 adds nothing,
    so that runs made before this option existed are reused."""
    return ([], "", "") if neg == 4 else (["--neg", str(neg)], f" neg={neg}", f"-neg{neg}")


def run_one(args, name: str, flags: list[str], out: Path) -> dict:
    """``ncf train`` in its own process; returns the run's summary (or the error)."""
    cmd = [sys.executable, "-m", "ncf", "train", "--dataset", args.dataset, "--epochs", str(args.epochs),
           "--device", args.device, "--quiet", "--out", str(out), *flags]
    log = out.parent / f"{out.name}.log"
    shown = "ncf train " + " ".join(cmd[4:])
    marker = out / "tune_command.json"  # written when the run finished: an extended grid reuses it
    if marker.exists() and json.loads(marker.read_text()) == cmd[1:]:
        s = json.loads((out / "summary.json").read_text())
        print(f"  {name}: reused {out}", file=sys.stderr, flush=True)
        return {"name": name, "command": shown, "best_epoch": s["best_epoch"], "valid": s["valid"],
                "test": s["test"], "wall_seconds": None, "device": s["device"], "reused": True}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call([*cmd, "--overwrite"], stdout=f, stderr=subprocess.STDOUT)  # a stale run: again
    wall = time.perf_counter() - t0
    if rc != 0 or not (out / "summary.json").exists():
        tail = log.read_text()[-600:]
        print(f"  {name}: FAILED (exit {rc}); {log}:\n{tail}", file=sys.stderr, flush=True)
        return {"name": name, "command": shown, "error": tail, "wall_seconds": wall}
    s = json.loads((out / "summary.json").read_text())
    marker.write_text(json.dumps(cmd[1:]))
    print(f"  {name}: valid hr@10 {s['valid']['hr@10']:.4f} ndcg@10 {s['valid']['ndcg@10']:.4f} "
          f"(best epoch {s['best_epoch']}, {wall:.0f} s)", file=sys.stderr, flush=True)
    return {"name": name, "command": shown, "best_epoch": s["best_epoch"], "valid": s["valid"],
            "test": s["test"], "wall_seconds": wall, "device": s["device"]}


def run_all(args, jobs: list[tuple[str, list[str], Path]]) -> list[dict]:
    with ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(lambda j: run_one(args, *j), jobs))


def best(rows: list[dict]) -> dict:
    ok = [r for r in rows if "valid" in r]
    if not ok:
        sys.exit("every run of a stage failed; see the logs named above")
    return max(ok, key=lambda r: r["valid"]["ndcg@10"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ncf-ml-1m")
    p.add_argument("--out", default="runs/tune-pretrain")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time (on one GPU, processes share it by time-slicing: on an H200, 14 at "
                   "once made a GMF-64 run at batch 4,096 take 343 s against 85 s alone)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--layers", default="512,256,128,64")
    p.add_argument("--batch-size", type=int, default=4096, help="of every stage")
    p.add_argument("--gmf-lr", type=floats, default=[0.001, 0.003])
    p.add_argument("--gmf-l2", type=floats, default=[0.0, 1e-4, 1e-3, 1e-2])
    p.add_argument("--gmf-neg", type=ints, default=[4], help="negatives per interaction for GMF")
    p.add_argument("--mlp-lr", type=floats, default=[0.001, 0.003])
    p.add_argument("--mlp-dropout", type=floats, default=[0.0, 0.1, 0.3])
    p.add_argument("--mlp-l2", type=floats, default=[0.0])
    p.add_argument("--mlp-neg", type=ints, default=[4], help="negatives per interaction for the MLP")
    p.add_argument("--alpha", type=floats, default=[0.5])
    p.add_argument("--finetune", default="sgd:0.001,sgd:0.01,sgd:0.1,sgd:1,adam:0.0001,adam:0.001",
                   help="OPTIMIZER:LR pairs for the fused model")
    p.add_argument("--json", default=None, help="write every run's figures here (updated after each stage)")
    args = p.parse_args()

    if "NCF_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["NCF_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    bs = ["--batch-size", str(args.batch_size)]
    report: dict = {"args": vars(args)}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))

    # stage 1: the two models alone
    stage1 = []
    for lr, l2, neg in itertools.product(args.gmf_lr, args.gmf_l2, args.gmf_neg):
        flags, name, suffix = neg_flags(neg)
        stage1.append((f"gmf lr={lr} l2={l2}{name}", ["--model", "gmf", "--factors", str(args.factors), *bs,
                                                      "--lr", str(lr), "--l2", str(l2), *flags],
                       root / f"gmf-{lr}-{l2}{suffix}"))
    for lr, d, l2, neg in itertools.product(args.mlp_lr, args.mlp_dropout, args.mlp_l2, args.mlp_neg):
        flags, name, suffix = neg_flags(neg)
        stage1.append((f"mlp lr={lr} dropout={d} l2={l2}{name}",
                       ["--model", "mlp", "--layers", args.layers, *bs, "--lr", str(lr), "--dropout", str(d),
                        "--l2", str(l2), *flags], root / f"mlp-{lr}-{d}-{l2}{suffix}"))
    print(f"stage 1: {len(stage1)} runs, {args.jobs} at a time", file=sys.stderr, flush=True)
    rows1 = run_all(args, stage1)
    report["stage1"] = rows1
    save()
    outs = {r["name"]: out for (_, _, out), r in zip(stage1, rows1, strict=True)}
    gmf = best([r for r in rows1 if r["name"].startswith("gmf")])
    mlp = best([r for r in rows1 if r["name"].startswith("mlp")])
    report["chosen_gmf"], report["chosen_mlp"] = gmf["name"], mlp["name"]

    # stage 2: fuse the chosen pair, fine-tune
    stage2 = []
    for alpha, pair in itertools.product(args.alpha, args.finetune.split(",")):
        opt, lr = pair.split(":")
        g, m = outs[gmf["name"]], outs[mlp["name"]]
        out = root / f"neumf-{alpha}-{opt}-{lr}--{g.name}--{m.name}"
        if out.exists() and not (out / "tune_command.json").exists():
            shutil.rmtree(out)  # an interrupted attempt
        stage2.append((f"neumf alpha={alpha} {opt} lr={lr}",
                       ["--model", "neumf", "--pretrained-gmf", str(g), "--pretrained-mlp", str(m),
                        "--factors", str(args.factors), "--layers", args.layers, *bs, "--alpha", str(alpha),
                        "--finetune-optimizer", opt, "--finetune-lr", lr], out))
    print(f"stage 2: {len(stage2)} fine-tunings of {gmf['name']} + {mlp['name']}", file=sys.stderr, flush=True)
    rows2 = run_all(args, stage2)
    report["stage2"] = rows2
    fused = best(rows2)
    report["chosen_neumf"] = fused["name"]
    save()

    lines = ["| stage | chosen on validation (runs) | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 "
             "| best epoch |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for stage, r, n in (("GMF", gmf, sum(x["name"].startswith("gmf") for x in rows1)),
                        ("MLP", mlp, sum(x["name"].startswith("mlp") for x in rows1)),
                        ("NeuMF, pre-trained", fused, len(rows2))):
        lines.append(f"| {stage} | {r['name']} ({n}) | {r['valid']['hr@10']:.4f} | {r['valid']['ndcg@10']:.4f} "
                     f"| {r['test']['hr@10']:.4f} | {r['test']['ndcg@10']:.4f} | {r['best_epoch']} |")
    print("\n".join(lines))
    print(f"chosen: {fused['command']}")


if __name__ == "__main__":
    main()
