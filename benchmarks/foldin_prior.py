"""Choose the Newton fold-in's prior on validation, not on the replay users (issue 18).

For a run trained by ``benchmarks/replay.py`` (OUT/base: every user but the held-out ones),
a sample of the *training* users is treated as new: each gets a vector folded in from ``n``
of their training items drawn at random (seeded), starting from the mean user, and is scored
on their validation item among all items but those ``n`` (full protocol; their other training
items stay candidates, the same for every prior). The held-out replay users are not read: the
same seed and fraction as the replay select them, and they are left out.

    python benchmarks/foldin_prior.py --run runs/replay-ml1m-mf/base --priors 0.01,0.03,0.1,0.3,1

Writes the table to stdout and, with ``--out FILE``, JSON.
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
from ncf.serve.retrieval import NCFRanker, make_ranker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import held_out_users  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="OUT/base of a replay run")
    p.add_argument("--dataset", default="ncf-ml-1m")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--points", default="1,3,5,10", help="the replay's points (they decide who is held out)")
    p.add_argument("--events", default="1,5", help="numbers of folded-in items to check")
    p.add_argument("--priors", default="0.01,0.03,0.1,0.3,1")
    p.add_argument("--users", type=int, default=1000, help="training users sampled as new visitors")
    p.add_argument("--negatives", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset(DataConfig(source=a.dataset, seed=a.seed))
    held = held_out_users(ds, a.fraction, sorted(int(x) for x in a.points.split(",")), a.seed)
    rec = Recommender.from_run(a.run)
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
    m = ds.train.matrix.tocsr()
    rng = np.random.default_rng(a.seed)
    valid = {int(u): int(i) for u, i in zip(ds.valid.users.tolist(), ds.valid.items.tolist(), strict=True)
             if int(u) not in set(held.tolist())}
    events = sorted(int(x) for x in a.events.split(","))
    pool = [u for u in sorted(valid) if m.indptr[u + 1] - m.indptr[u] > max(events)]
    users = rng.choice(pool, min(a.users, len(pool)), replace=False)
    picks = {int(u): rng.permutation(m.indices[m.indptr[u]:m.indptr[u + 1]])[:max(events)] for u in users}
    priors = [float(x) for x in a.priors.split(",")]
    res: dict = {"run": str(a.run), "users": len(users), "negatives": a.negatives, "hr@10": {}, "ndcg@10": {}}
    t0 = time.perf_counter()
    for n in events:
        for prior in priors:
            hits, gains = [], []
            for u in users.tolist():
                hist = picks[u][:n]
                s = score(newton_fold_in(terms, hist, mean, prior=prior, negatives=a.negatives))
                exclude = np.zeros(rec.n_items, bool)
                exclude[hist] = True
                slate = top_k(s, exclude, 10).tolist()
                hit = valid[u] in slate
                hits.append(float(hit))
                gains.append(1.0 / np.log2(slate.index(valid[u]) + 2) if hit else 0.0)
            res["hr@10"][f"{n}:{prior}"] = float(np.mean(hits))
            res["ndcg@10"][f"{n}:{prior}"] = float(np.mean(gains))
            print(f"events {n:2d}  prior {prior:<6g}  HR@10 {np.mean(hits):.4f}  NDCG@10 {np.mean(gains):.4f}",
                  flush=True)
    res["seconds"] = time.perf_counter() - t0
    if a.out:
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
