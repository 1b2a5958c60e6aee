"""LightGCN on the Gowalla split of the LightGCN paper (train.txt / test.txt, adjacency lines
``user item item ...``, 0-based ids): Recall@20 and NDCG@20 against epochs.

    # the paper's row (1000 epochs on a GPU in the paper): train on all of train.txt, test every 5 epochs
    nice -n 10 python benchmarks/lightgcn_gowalla.py --epochs 40 --minutes 20 --every 5 --out /tmp/lgcn_paper
    # a faster-converging setting
    nice -n 10 python benchmarks/lightgcn_gowalla.py --batch-size 16384 --lr 0.005 --epochs 100 --out /tmp/lgcn_big
    # model selection the project's way: 10% of each user's training items held out for validation,
    # the epoch chosen on validation recall@20, test read once for the chosen epoch
    nice -n 10 python benchmarks/lightgcn_gowalla.py --valid-ratio 0.1 --epochs 100 --out /tmp/lgcn_valid

Metrics: full ranking over every item the user did not interact with in training; recall@20 =
hits / the user's number of test items; NDCG@20 with binary gains, ideal over min(n, 20) hits
(``ncf.eval.topk``), averaged over users with test items.

With ``--valid-ratio 0`` (the default, the paper's protocol) there is no validation holdout:
test is evaluated every ``--every`` epochs and the table's best row is chosen on TEST, as
the paper's curves are; it is a reproduction of the paper's number, not a model selection.
With ``--valid-ratio r > 0`` the model picks its epoch on the validation items and test is
read once, at the end.

Writes ``curve.json`` (one record per epoch) and ``curve.png`` under ``--out``; prints a table.
The data files are read with a few NumPy lines (``--data``, default
``$NCF_DATA_DIR/gowalla``); nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp
import torch

from ncf.data.split import HoldOut
from ncf.models.lightgcn import LightGCN, topk_metrics

PAPER = {"recall@20": 0.1830, "ndcg@20": 0.1554}


def read_adjacency(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 arrays of the ``user item item ...`` lines of ``path``."""
    users, items = [], []
    for line in path.read_text().splitlines():
        ids = np.array(line.split(), dtype=np.int64)
        if len(ids) > 1:
            users.append(np.full(len(ids) - 1, ids[0]))
            items.append(ids[1:])
    return np.concatenate(users), np.concatenate(items)


def carve_valid(users: np.ndarray, items: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Bool mask over the training pairs: ``ratio`` of each user's items (rounded, at least one
    item kept for training) drawn for validation."""
    rng = np.random.default_rng(seed)
    key = rng.random(len(users))
    order = np.lexsort((key, users))
    counts = np.bincount(users)
    start = np.concatenate([[0], np.cumsum(counts)])[users[order]]
    rank = np.arange(len(users)) - start
    n_valid = np.minimum(np.round(counts * ratio).astype(np.int64), counts - 1)
    mask = np.zeros(len(users), bool)
    mask[order] = rank < n_valid[users[order]]
    return mask


def holdout(users: np.ndarray, items: np.ndarray) -> HoldOut:
    return HoldOut(users=users, items=items, candidates=np.zeros((len(users), 1), np.int64))


def plot(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("test", "test"), ("valid", "validation")):
        pts = [(r["epoch"], r[key]) for r in curve if r.get(key)]
        if pts:
            ax[0].plot([e for e, _ in pts], [m["recall@20"] for _, m in pts], marker="o", label=f"{label} recall@20")
            ax[0].plot([e for e, _ in pts], [m["ndcg@20"] for _, m in pts], marker="s", label=f"{label} ndcg@20")
    for name, value in PAPER.items():
        ax[0].axhline(value, ls="--", lw=0.8, color="grey")
        ax[0].text(0, value, f"paper {name} {value}", fontsize=7, va="bottom")
    ax[0].set_xlabel("epoch")
    ax[0].legend(fontsize=7)
    ax[1].plot([r["epoch"] for r in curve], [r["loss"] for r in curve])
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("BPR loss (training batches)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("NCF_DATA_DIR", "/work/shared/data")) / "gowalla")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--every", type=int, default=5, help="epochs between evaluations")
    ap.add_argument("--patience", type=int, default=10, help="validations without improvement (--valid-ratio > 0)")
    ap.add_argument("--valid-ratio", type=float, default=0.0, help="0: the paper's protocol (no validation)")
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this much time (0: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the process default)")
    ap.add_argument("--out", type=Path, default=Path("runs/lightgcn_gowalla"))
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    tu, ti = read_adjacency(args.data / "train.txt")
    su, si = read_adjacency(args.data / "test.txt")
    n_users, n_items = int(max(tu.max(), su.max())) + 1, int(max(ti.max(), si.max())) + 1
    full = sp.csr_matrix((np.ones(len(tu), np.float32), (tu, ti)), shape=(n_users, n_items))
    valid = None
    if args.valid_ratio > 0:
        mask = carve_valid(tu, ti, args.valid_ratio, args.seed)
        valid = holdout(tu[mask], ti[mask])
        tu, ti = tu[~mask], ti[~mask]
    train = SimpleNamespace(matrix=sp.csr_matrix((np.ones(len(tu), np.float32), (tu, ti)), shape=(n_users, n_items)),
                            n_users=n_users, n_items=n_items)
    print(f"gowalla: {n_users} users, {n_items} items, {train.matrix.nnz} training pairs, "
          f"{0 if valid is None else len(valid)} validation pairs, {len(su)} test pairs; load {os.getloadavg()}")

    model = LightGCN(n_users, n_items, factors=args.factors, layers=args.layers, lr=args.lr, l2=args.l2,
                     batch_size=args.batch_size, epochs=args.epochs, eval_every=args.every, patience=args.patience)
    curve: list[dict] = []
    t_start = time.perf_counter()

    def on_epoch(record: dict) -> bool:
        rec = {k: v for k, v in record.items() if k != "valid"}
        if record.get("valid"):
            rec["valid"] = {k: record["valid"][k] for k in ("recall@20", "ndcg@20")}
        if valid is None and (record["epoch"] % args.every == 0 or record["epoch"] == args.epochs):
            t0 = time.perf_counter()
            m = topk_metrics(model, su, si, full, 20)  # the paper's protocol: test along the way
            rec["test"] = {k: m[k] for k in ("recall@20", "ndcg@20")}
            rec["eval_seconds"] = time.perf_counter() - t0
        rec["load"] = os.getloadavg()[0]
        rec["wall_seconds"] = time.perf_counter() - t_start
        curve.append(rec)
        shown = rec.get("test") or rec.get("valid")
        metrics = f"recall@20 {shown['recall@20']:.4f} ndcg@20 {shown['ndcg@20']:.4f}" if shown else ""
        which = "test" if rec.get("test") else "valid" if shown else ""
        print(f"epoch {rec['epoch']:4d}  loss {rec['loss']:.4f}  {rec['train_seconds']:6.1f} s  "
              f"load {rec['load']:.2f}  {which} {metrics}", flush=True)
        return False

    model.on_epoch = on_epoch
    cfg = SimpleNamespace(seed=args.seed, device="cpu", progress=False,
                          deadline=time.monotonic() + 60 * args.minutes if args.minutes else None)
    model.fit(SimpleNamespace(train=train, valid=valid), cfg)
    final = None
    if valid is None and curve and not curve[-1].get("test"):  # stopped by --minutes between evaluations
        m = topk_metrics(model, su, si, full, 20)
        curve[-1]["test"] = {k: m[k] for k in ("recall@20", "ndcg@20")}
    if valid is not None:  # test read once, for the epoch chosen on validation
        m = topk_metrics(model, su, si, full, 20)
        final = {k: m[k] for k in ("recall@20", "ndcg@20")}

    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "stats": {k: v for k, v in model.stats.items() if k != "history"}, "test_at_best_valid": final,
               "curve": curve}
    (args.out / "curve.json").write_text(json.dumps(summary, indent=1))
    title = (f"LightGCN on Gowalla: d={args.factors}, K={args.layers}, batch {args.batch_size}, lr {args.lr}, "
             f"l2 {args.l2}" + (f", valid {args.valid_ratio}" if valid is not None else ", no validation"))
    plot(curve, args.out / "curve.png", title)

    print(f"\n{'epoch':>6} {'wall s':>8} {'s/epoch':>8} {'load':>5} {'loss':>7} {'recall@20':>10} {'ndcg@20':>8}")
    for r in curve:
        m = r.get("test") or r.get("valid")
        if m:
            print(f"{r['epoch']:6d} {r['wall_seconds']:8.0f} {r['train_seconds']:8.1f} {r['load']:5.2f} "
                  f"{r['loss']:7.4f} {m['recall@20']:10.4f} {m['ndcg@20']:8.4f}")
    if valid is None and any(r.get("test") for r in curve):
        best = max((r for r in curve if r.get("test")), key=lambda r: r["test"]["recall@20"])
        print(f"best TEST recall@20 {best['test']['recall@20']:.4f} / ndcg@20 {best['test']['ndcg@20']:.4f} at "
              f"epoch {best['epoch']} (chosen on test: the paper's protocol; "
              f"paper {PAPER['recall@20']} / {PAPER['ndcg@20']})")
    if final:
        print(f"test at the validation-chosen epoch {model.stats['best_epoch']}: recall@20 {final['recall@20']:.4f} "
              f"ndcg@20 {final['ndcg@20']:.4f}")
    print(f"{model.stats['epochs_run']} epochs, {model.stats['seconds_per_epoch']:.1f} s/epoch; "
          f"stopped: {model.stats['stopped']}; plot {args.out / 'curve.png'}")


if __name__ == "__main__":
    main()
