"""Choose the Newton fold-in's prior on validation, not on the replay users (issue 18).

For a run trained by ``benchmarks/replay.py`` (OUT/base: every user but the held-out ones),
a sample of the *training* users is treated as new: each gets a vector folded in from ``n``
of their training items drawn at random (seeded), starting from the mean user, and is scored
on their validation item among all items but those ``n`` (full protocol; their other training
items stay candidates, the same for every prior). The held-out replay users are not read: the
same seed and fraction as the replay select them, and they are left out.

    python benchmarks/foldin_prior.py --run runs/replay-ml1m-mf/base --write
    python benchmarks/foldin_prior.py --run runs/gmf64 --dataset ncf-ml-1m --fraction 0 --write  # any run

(``--dataset`` and ``--seed`` must be the run's; ``--fraction 0`` for a run that held nobody out.)

The prior with the best mean NDCG@10 over the numbers of events is the choice; ``--write``
puts it in RUN/foldin.json, which ``ncf serve`` reads (``--fold-in-prior`` overrides it).
Prints the table; ``--out FILE`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ncf.data.datasets import DataConfig, load_dataset
from ncf.models.base import newton_fold_in
from ncf.recommend import Recommender, top_k
from ncf.serve.foldin import FOLDIN_FILE
from ncf.serve.retrieval import NCFRanker, make_ranker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import held_out_users  # noqa: E402

PRIORS = "0.1,0.3,1,3,10"


def check(run: Path, ds, held: np.ndarray, events: list[int], priors: list[float], n_users: int = 1000,
          negatives: int = 4, seed: int = 0, log=print, start: str = "mean") -> dict:
    """Validation HR@10 / NDCG@10 of the Newton fold-in of ``run`` for each (events, prior), on
    ``n_users`` training users not in ``held`` (see the module docstring); "best": the prior
    with the highest mean NDCG@10 over ``events``."""
    rec = Recommender.from_run(run)
    model = rec.model.eval()
    ranker = make_ranker(model)
    if isinstance(ranker, NCFRanker):
        ranker.bind(ranker.item_features())
        terms, mean = ranker, ranker.user_vectors().astype(np.float64).mean(axis=0)

        def score(u):
            return ranker.score(u).astype(np.float64)
    elif hasattr(model, "linear_terms"):
        terms, mean = model, model.mean_user_vector().double().numpy()

        def score(u):
            return model.score_vectors(torch.as_tensor(u, dtype=torch.float32)[None])[0].double().numpy()
    else:
        raise SystemExit(f"{model.name}: no Newton fold-in (its fold-in has no prior to choose)")
    if start == "zero":  # start (and pull) at the zero vector instead of the mean user
        mean = np.zeros_like(mean)
    m = ds.train.matrix.tocsr()
    rng = np.random.default_rng(seed)
    skip = set(held.tolist())
    valid = {int(u): int(i) for u, i in zip(ds.valid.users.tolist(), ds.valid.items.tolist(), strict=True)
             if int(u) not in skip}
    pool = [u for u in sorted(valid) if m.indptr[u + 1] - m.indptr[u] > max(events)]
    users = rng.choice(pool, min(n_users, len(pool)), replace=False)
    picks = {int(u): rng.permutation(m.indices[m.indptr[u]:m.indptr[u + 1]])[:max(events)] for u in users}
    res: dict = {"run": str(run), "users": len(users), "negatives": negatives, "start": start, "events": events,
                 "priors": priors, "hr@10": {}, "ndcg@10": {}}
    t0 = time.perf_counter()
    for n in events:
        for prior in priors:
            hits, gains = [], []
            for u in users.tolist():
                hist = picks[u][:n]
                s = score(newton_fold_in(terms, hist, mean, prior=prior, negatives=negatives))
                exclude = np.zeros(rec.n_items, bool)
                exclude[hist] = True
                slate = top_k(s, exclude, 10).tolist()
                hit = valid[u] in slate
                hits.append(float(hit))
                gains.append(1.0 / np.log2(slate.index(valid[u]) + 2) if hit else 0.0)
            res["hr@10"][f"{n}:{prior:g}"] = float(np.mean(hits))
            res["ndcg@10"][f"{n}:{prior:g}"] = float(np.mean(gains))
            log(f"events {n:2d}  prior {prior:<6g}  HR@10 {np.mean(hits):.4f}  NDCG@10 {np.mean(gains):.4f}")
    mean_ndcg = {prior: float(np.mean([res["ndcg@10"][f"{n}:{prior:g}"] for n in events])) for prior in priors}
    res["best"] = max(priors, key=lambda x: (mean_ndcg[x], -priors.index(x)))  # ties: the first
    res["mean_ndcg@10"] = {f"{k:g}": v for k, v in mean_ndcg.items()}
    res["seconds"] = time.perf_counter() - t0
    return res


def write(run: Path, res: dict) -> None:
    """RUN/foldin.json: the chosen prior, which ``ncf serve`` then uses (``ncf.serve.foldin.run_prior``)."""
    (Path(run) / FOLDIN_FILE).write_text(json.dumps(
        {"prior": res["best"], "chosen_on": "validation items of training users folded in as new visitors "
         "(benchmarks/foldin_prior.py)", "mean_ndcg@10": res["mean_ndcg@10"], "users": res["users"],
         "events": res["events"]}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="OUT/base of a replay run")
    p.add_argument("--dataset", default="ncf-ml-1m")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--points", default="1,3,5,10", help="the replay's points (they decide who is held out)")
    p.add_argument("--events", default="1,3,5,10", help="numbers of folded-in items to check")
    p.add_argument("--priors", default=PRIORS)
    p.add_argument("--users", type=int, default=1000, help="training users sampled as new visitors")
    p.add_argument("--negatives", type=int, default=4, help="negatives per positive the fit weighs (the service: 4)")
    p.add_argument("--start", choices=("mean", "zero"), default="mean",
                   help="the vector a new visitor starts from and is pulled to (the service: the mean user)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="write the best prior to RUN/foldin.json")
    p.add_argument("--out", type=Path, help="the table as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset(DataConfig(source=a.dataset, seed=a.seed))
    held = held_out_users(ds, a.fraction, sorted(int(x) for x in a.points.split(",")), a.seed)
    res = check(a.run, ds, held, sorted(int(x) for x in a.events.split(",")),
                [float(x) for x in a.priors.split(",")], a.users, a.negatives, a.seed,
                log=lambda line: print(line, flush=True), start=a.start)
    print(f"best prior (mean NDCG@10 over the events): {res['best']:g}")
    if a.write:
        write(a.run, res)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
