"""sasrec quality on a time-ordered dataset: a validation grid, then seeds of the chosen setting.

    # choose: each --setting fitted once (seed 0); only VALIDATION metrics are computed
    nice python benchmarks/sasrec_quality.py --dataset ml-100k --setting loss=ce --setting loss=bce,epochs=400 \
        --out /tmp/sasrec_grid.jsonl
    # report: the chosen setting with 3 seeds, test under both protocols
    nice python benchmarks/sasrec_quality.py --dataset ml-100k --setting loss=ce --seeds 0,1,2 --test \
        --out /tmp/sasrec_test.jsonl

Every fit picks its epoch on the validation holdout (``ncf.models.sequences``). With
``--test``, test is scored twice: from the training sequence only (what ``ncf train`` /
``ncf evaluate`` report: the model has never seen the validation item), and with the
validation item appended to each user's sequence through ``score_histories`` (the user's
latest interaction before test, as a served model would see it; no refitting). Both use
the same candidates and the same seen-set (training + validation items excluded).
One JSON line per fit is appended to ``--out``; a table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.eval.evaluator import evaluate
from ncf.models import get_model_class
from ncf.models.sequences import ordered_histories


class HistoryScorer(nn.Module):
    """A Scorer over ``model.score_histories`` of fixed per-user histories."""

    def __init__(self, model, histories: list[torch.Tensor]):
        super().__init__()
        self.model, self.histories = model, histories
        self.n_users, self.n_items = model.n_users, model.n_items

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.score_histories([self.histories[int(u)] for u in users])

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        uniq, inv = torch.unique(users, return_inverse=True)
        return self.score_all(uniq)[inv, items]


def parse_setting(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "?"


def run_one(ds, model_name: str, setting: dict, seed: int, test: bool, threads: int = 1,
            save: Path | None = None) -> dict:
    cls = get_model_class(model_name)
    cfg = TrainConfig(model=model_name, seed=seed, device="cpu", threads=threads, params=setting)
    torch.manual_seed(seed)
    m = cls.from_params(ds.n_users, ds.n_items, **cfg.model_params(cls))
    t0 = time.perf_counter()
    m.fit(ds, cfg)
    fit_s = time.perf_counter() - t0
    best = next((r for r in m.stats["history"] if r["epoch"] == m.stats["best_epoch"]), {})
    rec = {"model": model_name, "setting": setting, "seed": seed, "best_epoch": m.stats["best_epoch"],
           "epochs_run": m.stats["epochs_run"], "fit_seconds": fit_s, "train_seconds": m.stats["train_seconds"],
           "valid": best.get("valid"), "valid_full": best.get("valid_full"), "load": os.getloadavg()[0]}
    if save is not None:
        from ncf.checkpoint import save_model

        name = "-".join(f"{k}={v}" for k, v in sorted(setting.items())) or "defaults"
        rec["saved"] = str(save / f"{name}-seed{seed}")
        save_model(Path(rec["saved"]), m)
    if test:
        rec.update(score_test(ds, m))
    return rec


def score_test(ds, m) -> dict:
    """Test under both protocols, from the training sequence and with the validation item appended."""
    rec = {}
    seen = ds.seen(include_valid=True)
    rec["test"] = evaluate(m, ds.test, "sampled")
    rec["test_full"] = evaluate(m, ds.test, "full", seen=seen)
    if not hasattr(m, "score_histories") and hasattr(m, "set_history"):  # ease / itemknn: X_u plus the item
        m.set_history(seen)
        hs = m
    else:
        items, ptr = ordered_histories(ds.train.matrix, ds.train.timestamps)
        hist = [torch.from_numpy(items[ptr[u]: ptr[u + 1]]) for u in range(ds.n_users)]
        for u, i in zip(ds.valid.users, ds.valid.items, strict=True):  # the validation item is the latest
            hist[u] = torch.cat([hist[u], torch.tensor([i])])
        hs = HistoryScorer(m, hist)
    rec["test_with_valid"] = evaluate(hs, ds.test, "sampled")
    rec["test_full_with_valid"] = evaluate(hs, ds.test, "full", seen=seen)
    return rec


def fmt(d: dict | None, keys=("hr@10", "ndcg@10")) -> str:
    return " / ".join(f"{d[k]:.4f}" for k in keys) if d else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--setting", action="append", default=None, help="KEY=VALUE,... model parameters (repeatable)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP waits on shared cores)")
    ap.add_argument("--test", action="store_true", help="also score test (only for the chosen setting)")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    ap.add_argument("--save", type=Path, default=None, help="keep each fitted model here (safetensors)")
    ap.add_argument("--score-saved", nargs="*", type=Path, default=None,
                    help="score test for these saved models or run directories (chosen on validation; "
                         "also ease / itemknn runs, whose history then gains the validation item) and stop")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)  # before any fit: a missing folder lost a finished one
    ds = load_dataset(DataConfig(source=args.dataset))
    if args.score_saved:
        from ncf.checkpoint import load_model

        for run in args.score_saved:
            rec = {"saved": str(run), "dataset": args.dataset, **score_test(ds, load_model(run))}
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: rec[k] for k in ("saved", "test", "test_full", "test_full_with_valid")}), flush=True)
        return
    if ds.train.timestamps is None:
        raise SystemExit(f"{args.dataset}: no timestamps, no sequence")
    rows = []
    for text in args.setting or [""]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            rec = run_one(ds, args.model, parse_setting(text), seed, args.test, args.threads, args.save)
            rec.update({"dataset": args.dataset, "commit": commit()})
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            rows.append(rec)
            print(json.dumps({k: rec.get(k) for k in ("setting", "seed", "best_epoch", "fit_seconds", "valid",
                                                      "valid_full", "test_full", "test_full_with_valid")}),
                  flush=True)
    print(f"\n{args.model} on {args.dataset} (commit {commit()}; load average at the end "
          f"{os.getloadavg()[0]:.1f})\n")
    head = "| setting | seed | best epoch | fit s | valid sampled | valid full |"
    if args.test:
        head += " test sampled | test full | test full, valid item in sequence |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (f"| {json.dumps(r['setting'])} | {r['seed']} | {r['best_epoch']} | {r['fit_seconds']:.0f} | "
                f"{fmt(r['valid'])} | {fmt(r['valid_full'])} |")
        if args.test:
            line += f" {fmt(r['test'])} | {fmt(r['test_full'])} | {fmt(r['test_full_with_valid'])} |"
        print(line)
    if args.test and len(rows) > 1:
        for key in ("test", "test_full", "test_with_valid", "test_full_with_valid"):
            for k in ("hr@10", "ndcg@10"):
                v = np.array([r[key][k] for r in rows])
                print(f"{key} {k}: {v.mean():.4f} ± {v.std(ddof=1):.4f}")


if __name__ == "__main__":
    main()
