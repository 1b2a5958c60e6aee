"""Replay held-out users through the HTTP API (issue 18): does fold-in personalise as clicks arrive?

A share of the users (``--fraction``, 10 %) is held out of training entirely (no row of
theirs trains the model; they are replayed under ids the model does not know). Each held-out
user's interactions are POSTed one at a time to the service (FastAPI ``TestClient``, the
in-process store); after 1, 3, 5 and 10 events the service's top 10 (GET, seen events left
out) is scored against the user's next interaction: HR@10 and NDCG@10 among all items not yet
interacted with. Three recommenders on the same users and events:

- ``fold-in``: the service as shipped (each POST folds the event into the user's vector);
- ``popularity``: the same service with fold-in off (``fallback: true``, popular items minus
  the recorded ones);
- ``retrained``: the model trained again with the held-out users' first n events as ordinary
  training rows (one training per n), ranking all items but those n.

Order of the events: ``ml-100k`` has timestamps (each user's items by time; the last two are
the dataset's valid and test holdouts, the latest). ``ncf-ml-1m``'s training file has no
timestamps (``/work/shared/data/README.md``), so there a user's training items are replayed in
a seeded random order, followed by the test item (the latest): the "next item" after n <= 10
events is then a random one of the user's items, not the next in time.

    nice python benchmarks/replay.py --dataset ncf-ml-1m --model gmf --out runs/replay-ml1m

Writes OUT/replay.json, OUT/replay.png and the run directories OUT/base, OUT/retrained-N.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.interactions import Interactions
from ncf.data.split import Dataset
from ncf.recommend import Recommender, top_k

console = Console()
OFFSET = 10_000_000  # held-out users are replayed as user OFFSET + raw id: unknown to the model


def sequences(ds: Dataset, users: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """Each user's item indexes in replay order (see the module docstring)."""
    m = ds.train.matrix.tocsr()
    ts = ds.train.timestamps
    valid = {} if ds.valid is None else dict(zip(ds.valid.users.tolist(), ds.valid.items.tolist(), strict=True))
    test = dict(zip(ds.test.users.tolist(), ds.test.items.tolist(), strict=True))
    rng = np.random.default_rng(seed)
    out = {}
    for u in users.tolist():
        lo, hi = m.indptr[u], m.indptr[u + 1]
        items = m.indices[lo:hi].astype(np.int64)
        if ts is not None:
            items = items[np.lexsort((items, ts[lo:hi]))]
            tail = [x for x in (valid.get(u), test.get(u)) if x is not None]
        else:
            if u in valid:
                items = np.append(items, valid[u])
            items = rng.permutation(items)
            tail = [test[u]] if u in test else []
        out[u] = np.concatenate([items, np.asarray(tail, np.int64)])
    return out


def held_out_users(ds: Dataset, fraction: float, points: list[int], seed: int) -> np.ndarray:
    """The replayed users: ``fraction`` of all users, drawn (seeded) among those with more than
    ``max(points)`` interactions, sorted."""
    counts = np.diff(ds.train.matrix.tocsr().indptr) + (0 if ds.valid is None else 1) + 1
    eligible = np.flatnonzero(counts > max(points))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, int(round(fraction * ds.n_users)), replace=False))


def without(ds: Dataset, users: np.ndarray, extra: dict[int, np.ndarray] | None = None) -> Dataset:
    """``ds`` without any interaction of ``users`` (and their holdouts); ``extra``: item indexes
    to add back as training rows of those users (the retrained baseline)."""
    tr = ds.train
    u, i = tr.coo()
    keep = ~np.isin(u, users)
    uu, ii = [u[keep]], [i[keep]]
    tt = None if tr.timestamps is None else [tr.timestamps[keep]]
    for user, items in (extra or {}).items():
        uu.append(np.full(len(items), user, np.int64))
        ii.append(items)
        if tt is not None:
            tt.append(np.full(len(items), tr.timestamps.max() + 1, tr.timestamps.dtype))
    train = Interactions.from_indices(np.concatenate(uu), np.concatenate(ii), tr.user_map, tr.item_map,
                                      None if tt is None else np.concatenate(tt), None, meta=tr.meta)

    def keep_h(h):
        if h is None:
            return None
        k = ~np.isin(h.users, users)
        return type(h)(h.users[k], h.items[k], h.candidates[k])

    return Dataset(ds.name, train, keep_h(ds.test), keep_h(ds.valid), ds.n_interactions, ds.report, ds.item_info)


def _metrics(slate: list, nxt) -> tuple[float, float]:
    if nxt in slate:
        return 1.0, 1.0 / np.log2(slate.index(nxt) + 2)
    return 0.0, 0.0


def replay(run: Path, seqs: dict[int, np.ndarray], points: list[int], foldin: bool, label: str) -> dict:
    """POST each held-out user's first max(points) events; GET the top 10 after each point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from ncf.serve.app import create_app
    from ncf.serve.store import InMemoryStore

    client = TestClient(create_app(run, InMemoryStore(), foldin=foldin))
    service = client.app.state.service
    item_map = service.rec.item_map
    hits = {n: [] for n in points}
    ndcg = {n: [] for n in points}
    fallback = {n: 0 for n in points}
    post_s, get_s = [], []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"replay ({label})", total=len(seqs))
        for user, seq in seqs.items():
            uid = OFFSET + int(user_raw[user])
            for n in range(1, max(points) + 1):
                t0 = time.perf_counter()
                r = client.post(f"/v1/users/{uid}/interactions", json={"item": item_map.raw(int(seq[n - 1]))})
                post_s.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError(f"POST failed: {r.status_code} {r.text}")
                if n in points:
                    t0 = time.perf_counter()
                    body = client.get(f"/v1/users/{uid}/recommendations", params={"k": 10}).json()
                    get_s.append(time.perf_counter() - t0)
                    h, g = _metrics([x["item"] for x in body["items"]], item_map.raw(int(seq[n])))
                    hits[n].append(h)
                    ndcg[n].append(g)
                    fallback[n] += bool(body["fallback"])
            prog.advance(task)
    return {"hr@10": {n: float(np.mean(hits[n])) for n in points},
            "ndcg@10": {n: float(np.mean(ndcg[n])) for n in points},
            "fallback_answers": fallback,
            "post_ms_median": 1e3 * float(np.median(post_s)), "get_ms_median": 1e3 * float(np.median(get_s)),
            "prior": None if service.foldin is None else service.foldin.prior}


def retrained(data_cfg, cfg, ds: Dataset, held: np.ndarray, seqs, points, out: Path) -> dict:
    from ncf.train.run import train

    res = {"hr@10": {}, "ndcg@10": {}, "train_seconds": {}}
    for n in points:
        extra = {u: s[:n] for u, s in seqs.items()}
        d = without(ds, held, extra)
        summary = train(data_cfg, cfg, out / f"retrained-{n}", dataset=d)
        rec = Recommender.from_run(out / f"retrained-{n}")
        users = list(seqs)
        scores = rec.scores(users)
        hits, gains = [], []
        for row, u in zip(scores, users, strict=True):
            exclude = np.zeros(rec.n_items, bool)
            exclude[seqs[u][:n]] = True
            slate = top_k(row, exclude, 10).tolist()
            h, g = _metrics(slate, int(seqs[u][n]))
            hits.append(h)
            gains.append(g)
        res["hr@10"][n], res["ndcg@10"][n] = float(np.mean(hits)), float(np.mean(gains))
        res["train_seconds"][n] = summary.get("train_seconds")
    return res


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("hr@10", "ndcg@10"), strict=True):
        for name, style in (("fold-in", "o-"), ("retrained", "s--"), ("popularity", "^:")):
            if name in result:
                got = {int(n): v for n, v in result[name][metric].items()}  # int keys, or str from JSON
                pts = sorted(got)
                ax.plot(pts, [got[n] for n in pts], style, label=name)
        ax.set_xlabel("events replayed")
        ax.set_ylabel(metric.upper())
        ax.set_xticks(result["points"])
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"replay: {result['held_out_users']} held-out {result['dataset']} users, {result['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


user_raw: dict[int, object] = {}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ncf-ml-1m")
    p.add_argument("--model", default="gmf")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fraction", type=float, default=0.1, help="share of users held out of training")
    p.add_argument("--points", default="1,3,5,10")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--factors", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--neg", type=int, default=4, help="sampled negatives per positive (SGD models)")
    p.add_argument("--l2", type=float, default=0.0, help="L2 on the embeddings (gmf, mf: TrainConfig.l2)")
    p.add_argument("--patience", type=int, default=5, help="early stopping on the base run's validation (0: off)")
    p.add_argument("--params", default="{}", help="model parameters as JSON (e.g. '{\"l2\": 300}' for ease)")
    p.add_argument("--no-retrain", action="store_true", help="skip the retrained baseline")
    p.add_argument("--retrain-points", default="",
                   help="retrain only after these numbers of events (default: every point)")
    p.add_argument("--train-only", action="store_true", help="train OUT/base and stop (then --reuse)")
    p.add_argument("--reuse", action="store_true", help="reuse OUT/base if it was trained (same arguments!)")
    p.add_argument("--prior", default="",
                   help="Newton fold-in prior: 'auto' (chosen on training users' validation items, "
                        "benchmarks/foldin_prior.py, and written to OUT/base/foldin.json), a number, or "
                        "empty (the run's foldin.json, else the service default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (serving uses 1)")
    a = p.parse_args(argv)
    points = sorted(int(x) for x in a.points.split(","))
    data_cfg = DataConfig(source=a.dataset, seed=a.seed)
    ds = load_dataset(data_cfg)
    held = held_out_users(ds, a.fraction, points, a.seed)
    seqs = sequences(ds, held, a.seed)
    user_raw.update({int(u): ds.train.user_map.raw(int(u)) for u in held})
    options = {"factors": a.factors, "epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size, "neg": a.neg,
               "l2": a.l2, "patience": a.patience, "seed": a.seed, "threads": a.threads,
               "params": json.loads(a.params)}
    from ncf.models import get_model_class

    cls = get_model_class(a.model)
    # options the model does not take are left out (TrainConfig.for_model refuses them by name)
    options = {k: v for k, v in options.items()
               if k in ("seed", "threads", "params") or k in cls.config_fields or cls.trainable}
    cfg = TrainConfig.for_model(a.model, options)
    from ncf.train.run import train

    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if (a.out / "base" / "summary.json").exists() and a.reuse:
        summary = json.loads((a.out / "base" / "summary.json").read_text())
        console.print(f"reusing the trained run {a.out / 'base'}")
    else:
        summary = train(data_cfg, cfg, a.out / "base", dataset=without(ds, held))
        console.print(f"trained {a.model} on {ds.n_users - len(held)} users in {time.perf_counter() - t0:.0f}s")
    if a.train_only:
        return {"base": summary}
    torch.set_num_threads(1)
    prior_check = None
    if a.prior == "auto":
        import foldin_prior

        prior_check = foldin_prior.check(a.out / "base", ds, held, points, [float(x) for x in
                                         foldin_prior.PRIORS.split(",")], seed=a.seed, log=console.print)
        foldin_prior.write(a.out / "base", prior_check)
        console.print(f"fold-in prior {prior_check['best']:g}, chosen on validation (training users)")
    elif a.prior:
        (a.out / "base" / "foldin.json").write_text(json.dumps({"prior": float(a.prior)}) + "\n")
    result = {"dataset": ds.name, "model": a.model, "held_out_users": int(len(held)), "points": points,
              "order": "time" if ds.train.timestamps is not None else "seeded random (no timestamps), test item last",
              "train": cfg.to_dict(), "base_test": summary.get("test")}
    if prior_check is not None:
        result["prior_check"] = prior_check
    result["fold-in"] = replay(a.out / "base", seqs, points, True, "fold-in")
    result["popularity"] = replay(a.out / "base", seqs, points, False, "popularity")
    (a.out / "replay.json").write_text(json.dumps(result, indent=2) + "\n")  # partial: before retraining
    console.print({n: (result["fold-in"]["hr@10"][n], result["popularity"]["hr@10"][n]) for n in points})
    if not a.no_retrain:
        torch.set_num_threads(a.threads)
        again = sorted(int(x) for x in a.retrain_points.split(",")) if a.retrain_points else points
        result["retrained"] = retrained(data_cfg, cfg, ds, held, seqs, again, a.out)
    (a.out / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, a.out / "replay.png")
    t = Table(title=f"replay: {len(held)} held-out {ds.name} users ({result['order']}), {a.model}")
    t.add_column("events")
    for name in ("fold-in", "popularity", "retrained"):
        if name in result:
            t.add_column(f"{name} HR@10", justify="right")
            t.add_column(f"{name} NDCG@10", justify="right")
    t.add_column("fold-in / pop HR", justify="right")
    for n in points:
        row = [str(n)]
        for name in ("fold-in", "popularity", "retrained"):
            if name in result:
                got = result[name]["hr@10"].get(n)
                row += ["-", "-"] if got is None else [f"{got:.4f}", f"{result[name]['ndcg@10'][n]:.4f}"]
        pop = result["popularity"]["hr@10"][n]
        row.append(f"{result['fold-in']['hr@10'][n] / pop:.2f}x" if pop else "-")
        t.add_row(*row)
    console.print(t)
    console.print(f"median POST {result['fold-in']['post_ms_median']:.1f} ms (fold-in), "
                  f"{result['popularity']['post_ms_median']:.1f} ms (without); "
                  f"median GET {result['fold-in']['get_ms_median']:.1f} ms; written {a.out / 'replay.json'}")
    return result


if __name__ == "__main__":
    main()
