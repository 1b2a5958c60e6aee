"""Batch recommendation for every Gowalla user (29,858 users x 40,981 items, top 20, training
items left out): ncf against ``implicit``'s own batched ``recommend`` on the identical factors.

The factors come from implicit's ALS fitted for ``--fit-iterations`` iterations on LightGCN's
Gowalla training file (0: random factors). Each library runs in its own process at its best:

- implicit: ``AlternatingLeastSquares.recommend(userids, user_items, N=20,
  filter_already_liked_items=True)`` with its defaults (its thread count);
- ncf: ``Recommender.recommend_table`` (arrays: one score_all and one top-k per block of users),
  and ``FittedModel.recommend`` (the same, made a DataFrame), on ``--threads`` torch threads;
- with ``--cli``: ``ncf recommend RUN --users FILE --out FILE.parquet`` end to end (a fresh
  process: start-up, loading the run, writing the file).

Then checks that the two libraries give the same items (a user whose lists differ only by items
tied within float rounding is counted apart), and prints both times.

    python benchmarks/batch_recommend.py --data-dir /work/shared/data --threads 2 --cli

Prints ``uptime`` beside the timings: on a shared machine they are measured under load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from rich.console import Console
from rich.table import Table

from gowalla_files import data_dir, factors, fit_implicit, gowalla, ials_model, uptime


def implicit_worker(tmp: Path, k: int, repeat: int) -> dict:
    from implicit.cpu.als import AlternatingLeastSquares

    u, v = np.load(tmp / "user_factors.npy"), np.load(tmp / "item_factors.npy")
    train = sp.load_npz(tmp / "train.npz").tocsr()
    als = AlternatingLeastSquares(factors=u.shape[1])  # its defaults: every core
    als.user_factors, als.item_factors = u, v
    users = np.arange(train.shape[0])
    times, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        ids, _ = als.recommend(users, train, N=k, filter_already_liked_items=True)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    np.save(tmp / "implicit_ids.npy", ids)
    return {"seconds": times, "cpu_seconds": cpu, "threads": als.num_threads or "all cores"}


def ncf_worker(tmp: Path, k: int, repeat: int, threads: int, batch: int) -> dict:
    import torch

    from ncf.api import FittedModel
    from ncf.config import TrainConfig
    from ncf.data.interactions import IdMap
    from ncf.recommend import Recommender, block_users

    if threads:
        torch.set_num_threads(threads)
    u, v = np.load(tmp / "user_factors.npy"), np.load(tmp / "item_factors.npy")
    train = sp.load_npz(tmp / "train.npz").tocsr()
    rec = Recommender(ials_model(u, v), IdMap(list(range(len(u)))), IdMap(list(range(len(v)))), train)
    users = list(range(len(u)))
    batch = batch or None  # 0: the library's default block
    arrays, frames, cpu = [], [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        table = rec.recommend_table(users, k, batch_size=batch)
        arrays.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    fitted = FittedModel(rec, TrainConfig.for_model("ials", {"factors": u.shape[1]}))
    for _ in range(repeat):
        t = time.perf_counter()
        frame = fitted.recommend(users, k=k, batch_size=batch)
        frames.append(time.perf_counter() - t)
    assert (table.counts == k).all() and len(frame) == k * len(users)
    np.save(tmp / "ncf_ids.npy", table.items.reshape(len(users), k))
    fitted.save(tmp / "run", overwrite=True)
    return {"seconds": arrays, "cpu_seconds": cpu, "frame_seconds": frames, "threads": torch.get_num_threads(),
            "block": batch or block_users(len(v))}


def cli_run(tmp: Path, k: int) -> dict:
    users = tmp / "users.txt"
    n = len(np.load(tmp / "user_factors.npy"))
    users.write_text("\n".join(map(str, range(n))) + "\n")
    out = tmp / "recs.parquet"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ncf", "recommend", str(tmp / "run"), "--users", str(users), "--out",
                    str(out), "-k", str(k), "--overwrite", "--json"], check=True, capture_output=True)
    seconds = time.perf_counter() - t
    import pandas as pd

    got = pd.read_parquet(out)
    same = np.array_equal(got["item"].to_numpy().reshape(n, k), np.load(tmp / "ncf_ids.npy"))
    return {"seconds": seconds, "same_as_python": bool(same)}


def compare(tmp: Path, train: sp.csr_matrix) -> dict:
    """Users whose two lists are identical; of the others, those whose difference is only
    among items whose scores are equal within float32 rounding."""
    a, b = np.load(tmp / "implicit_ids.npy"), np.load(tmp / "ncf_ids.npy")
    u, v = np.load(tmp / "user_factors.npy"), np.load(tmp / "item_factors.npy")
    differ = np.flatnonzero((a != b).any(axis=1))
    ties = 0
    for user in differ.tolist():
        sa = v[a[user]] @ u[user]
        sb = v[b[user]] @ u[user]
        tol = 1e-5 * max(1.0, float(np.abs(sa).max()))
        seen = set(train.indices[train.indptr[user]:train.indptr[user + 1]].tolist())
        if np.allclose(sa, sb, atol=tol, rtol=0) and not seen & set(a[user].tolist() + b[user].tolist()):
            ties += 1
    return {"users": len(a), "identical": int(len(a) - len(differ)), "differ_by_float_ties": ties,
            "differ_otherwise": int(len(differ) - ties)}


def run_worker(name: str, tmp: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--tmp", str(tmp), "-k", str(args.k), "--repeat",
           str(args.repeat), "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {name} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="Folder holding gowalla/ (default: $NCF_DATA_DIR).")
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="ncf's torch threads (0: torch's default).")
    ap.add_argument("--batch-size", type=int, default=0, help="ncf: users scored per block (0: its default).")
    ap.add_argument("--repeat", type=int, default=2, help="Timed runs in each worker process.")
    ap.add_argument("--rounds", type=int, default=2, help="Worker processes per library, alternating.")
    ap.add_argument("--fit-iterations", type=int, default=3, help="implicit ALS iterations (0: random factors).")
    ap.add_argument("--cli", action="store_true", help="Also time `ncf recommend --users --out` end to end.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=["implicit", "ncf"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "implicit":
        print(json.dumps(implicit_worker(Path(args.tmp), args.k, args.repeat)))
        return
    if args.worker == "ncf":
        print(json.dumps(ncf_worker(Path(args.tmp), args.k, args.repeat, args.threads, args.batch_size)))
        return
    console = Console(width=140)
    train, _, _ = gowalla(data_dir(args.data_dir))
    n_users, n_items = train.shape
    if args.fit_iterations:
        u, v = fit_implicit(train, args.factors, args.fit_iterations)
    else:
        u, v = factors(n_users, n_items, args.factors)
    with tempfile.TemporaryDirectory(prefix="ncf-batch-rec-") as d:
        tmp = Path(d)
        np.save(tmp / "user_factors.npy", u)
        np.save(tmp / "item_factors.npy", v)
        sp.save_npz(tmp / "train.npz", train)
        loads = [uptime()]
        imp, own = [], []
        for _ in range(args.rounds):  # alternating, so that a change of load hits both
            imp.append(run_worker("implicit", tmp, args))
            own.append(run_worker("ncf", tmp, args))
            loads.append(uptime())
        cli = cli_run(tmp, args.k) if args.cli else None
        if cli:
            loads.append(uptime())
        same = compare(tmp, train)
    imp = {key: [x for r in imp for x in r[key]] if isinstance(imp[0][key], list) else imp[0][key] for key in imp[0]}
    own = {key: [x for r in own for x in r[key]] if isinstance(own[0][key], list) else own[0][key] for key in own[0]}
    fitted = f"implicit ALS, {args.fit_iterations} iterations" if args.fit_iterations else "random"
    t = Table(title=f"top {args.k} for all {n_users} Gowalla users x {n_items} items, seen items left out, "
                    f"{args.factors} factors ({fitted})")
    for c in ("what", "threads", "runs", "min s", "median s", "median CPU s"):
        t.add_column(c, justify="right" if c != "what" else "left")
    runs = str(args.rounds * args.repeat)
    t.add_row("implicit recommend (ids, scores arrays)", str(imp["threads"]), runs, f"{min(imp['seconds']):.2f}",
              f"{statistics.median(imp['seconds']):.2f}", f"{statistics.median(imp['cpu_seconds']):.2f}")
    t.add_row(f"ncf recommend_table (arrays, blocks of {own['block']})", str(own["threads"]), runs,
              f"{min(own['seconds']):.2f}", f"{statistics.median(own['seconds']):.2f}",
              f"{statistics.median(own['cpu_seconds']):.2f}")
    t.add_row("ncf FittedModel.recommend (DataFrame)", str(own["threads"]), runs,
              f"{min(own['frame_seconds']):.2f}", f"{statistics.median(own['frame_seconds']):.2f}", "")
    if cli:
        t.add_row("ncf recommend --users --out .parquet (new process)", "default", "1", f"{cli['seconds']:.2f}",
                  f"{cli['seconds']:.2f}", "")
    console.print(t)
    console.print(f"same items: {same['identical']} of {same['users']} users identical; "
                  f"{same['differ_by_float_ties']} differ only among items tied within float rounding; "
                  f"{same['differ_otherwise']} differ otherwise"
                  + (f"; the CLI's file equals the Python lists: {cli['same_as_python']}" if cli else ""))
    console.print("load (uptime) before the first worker, after each round" + (", after the CLI:" if cli else ":"))
    for line in loads:
        console.print(f"  {line}")
    if args.json:
        print(json.dumps({"implicit": imp, "ncf": own, "cli": cli, "same": same, "uptime": loads}, indent=2))


if __name__ == "__main__":
    main()
