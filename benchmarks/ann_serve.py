"""Approximate retrieval on a large synthetic catalogue (issue 18).

Writes a run directory holding a NeuMF with ``--items`` items (1,000,000) and ``--users``
users (each with ``--seen`` random training items), then:

1. quality and latency, in process: for ``--sample`` users (none of them among the users whose
   Jacobians the first stage averages), the service's top 10 with the HNSW first stage
   (``--ann on``, ``--candidates``) against exact ranking of all items by the full model
   (``--ann off``, no candidates): overlap@10; the latency of each stage (HNSW search, exact
   re-ranking of its candidates, the whole in-process recommendation, exact full ranking);
   and two diagnostics: the first stage's ceiling (the exact top 10 among the exact
   dot-product top ``--candidates``; the same for the old first-order expansion at the mean
   user, ``NCFRanker.linear_terms``) and how much of the dot product's own top 10 HNSW finds;
2. (with ``--load``) latency over HTTP: ``benchmarks/serve_load.py load`` against a spawned
   ``ncf serve --ann auto`` (HNSW at this size; the index persisted in step 1 is loaded, not
   rebuilt) at ``--rates`` requests per second.

``--model random`` (the headline) is NeuMF's own random initialisation. ``--model trained-like
--like RUN`` keeps a trained NeuMF's tower, output layer and users and draws the million items'
embeddings from a Gaussian fitted to its trained item embeddings: the score function of a
trained model at a catalogue size no dataset here has.

    nice python benchmarks/ann_serve.py --out /tmp/ann-1m --items 1000000 --load --rates 200

Prints ``uptime`` beside every timing: on a shared machine they are measured under load.
Writes OUT/ann_bench.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

console = Console(width=140)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _trained_like(model, like: Path, seed: int) -> str:
    """Copy a trained NeuMF's tower, output layer and user tables into ``model`` (same users) and
    draw its item embeddings from a Gaussian fitted to the trained items' ([GMF ; MLP] jointly)."""
    from ncf.checkpoint import load_model
    from ncf.models import NeuMF

    src = load_model(like)
    if not isinstance(src, NeuMF) or src.hparams()["layers"] != model.hparams()["layers"] \
            or src.hparams()["factors"] != model.hparams()["factors"] or src.n_users != model.n_users:
        raise SystemExit(f"--like {like}: needs a NeuMF with the same factors, layers and number of users "
                         f"({model.n_users}); pass --users {src.n_users} and its --factors/--layers")
    items = torch.cat([src.gmf.item_emb.weight, src.mlp.tower.item_emb.weight], 1).detach().double()
    mean, cov = items.mean(0), torch.cov(items.T)
    gen = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(len(cov), dtype=cov.dtype))
    f = src.gmf.item_emb.embedding_dim
    with torch.no_grad():
        for start in range(0, model.n_items, 1 << 18):
            n = min(model.n_items, start + (1 << 18)) - start
            draw = (mean + torch.randn(n, len(mean), generator=gen, dtype=torch.float64) @ chol.T).float()
            model.gmf.item_emb.weight[start:start + n] = draw[:, :f]
            model.mlp.tower.item_emb.weight[start:start + n] = draw[:, f:]
        model.gmf.user_emb.weight.copy_(src.gmf.user_emb.weight)
        model.mlp.tower.user_emb.weight.copy_(src.mlp.tower.user_emb.weight)
        model.mlp.tower.linears.load_state_dict(src.mlp.tower.linears.state_dict())
        model.predict.load_state_dict(src.predict.state_dict())
    return f"{like} ({src.n_items} trained items)"


def write_run(out: Path, n_users: int, n_items: int, seen: int, factors: int, layers: str, seed: int,
              kind: str = "random", like: Path | None = None) -> None:
    import scipy.sparse as sp

    from ncf.checkpoint import save_model, save_run_data
    from ncf.data.interactions import IdMap
    from ncf.models import NeuMF

    torch.manual_seed(seed)
    model = NeuMF(n_users, n_items, factors, tuple(int(x) for x in layers.split(","))).eval()
    source = f"synthetic {n_users} x {n_items}, {kind} NeuMF"
    if kind == "trained-like":
        source += f" like {_trained_like(model, like, seed)}"
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_users), seen)
    cols = np.concatenate([rng.choice(n_items, seen, replace=False) for _ in range(n_users)])
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    out.mkdir(parents=True, exist_ok=True)
    save_run_data(out, IdMap(list(range(1, n_users + 1))), IdMap(list(range(1, n_items + 1))), matrix, None)
    save_model(out, model, {"data": {"source": source}})


def _pcts(values: list[float]) -> dict:
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def quality(run: Path, users: list[int], candidates: int, diagnostics: bool = True) -> dict:
    from ncf.recommend import top_k
    from ncf.serve.app import OnlineService
    from ncf.serve.store import InMemoryStore

    t0 = time.perf_counter()
    approx = OnlineService(run, InMemoryStore(), candidates=candidates, ann="on")
    approx.ensure_ready()
    ready_s = time.perf_counter() - t0
    exact = OnlineService(run, InMemoryStore(), ann="off")
    exact.ensure_ready()
    ranker, rec = approx.ranker, approx.rec
    rows = ranker.retrieval_rows() if diagnostics else None  # computed here if the index was loaded
    taylor = ranker.linear_terms(np.arange(rec.n_items)) if diagnostics else None
    times = {"hnsw": [], "rerank": [], "recommend": [], "exact": []}
    got, want, states = {}, {}, {}
    # timed in separate passes: exact full ranking's large temporaries would otherwise evict
    # what the approximate path keeps in cache, and inflate its timings
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("HNSW + exact re-ranking", total=len(users))
        for u in users:
            state = states[u] = approx.read_user(str(u))
            exclude = rec.items_mask(state.events)
            exclude[state.seen] = True
            t = time.perf_counter()
            cand = approx.ann.search(ranker.retrieval_query(state.vector), candidates, exclude)
            t1 = time.perf_counter()
            slate = rec.slate(ranker.score(state.vector, cand), exclude, 10, False, cand)
            t2 = time.perf_counter()
            got[u] = [x["item"] for x in approx.recommend(str(u), 10)["items"]]
            t3 = time.perf_counter()
            assert [x["item"] for x in slate] == got[u]  # the stages timed are the service's own
            for key, dt in (("hnsw", t1 - t), ("rerank", t2 - t1), ("recommend", t3 - t2)):
                times[key].append(1e3 * dt)
            prog.advance(task)
        task = prog.add_task("exact", total=len(users))
        for u in users:
            t = time.perf_counter()
            want[u] = [x["item"] for x in exact.recommend(str(u), 10)["items"]]
            times["exact"].append(1e3 * (time.perf_counter() - t))
            prog.advance(task)
    overlaps = [len(set(got[u]) & set(want[u])) / 10 for u in users]
    ceiling, taylor_ceiling, hnsw_recall = [], [], []
    for u in users if diagnostics else []:
        state = states[u]
        exclude = rec.items_mask(state.events)
        exclude[state.seen] = True
        truth = set(rec.item_map.get(str(i)) for i in want[u])
        query = ranker.retrieval_query(state.vector)
        dot = rows @ query
        ceiling.append(len(truth & set(top_k(dot, exclude, candidates).tolist())) / 10)
        old = taylor[1] + taylor[0] @ state.vector.astype(np.float64)
        taylor_ceiling.append(len(truth & set(top_k(old, exclude, candidates).tolist())) / 10)
        cand = approx.ann.search(query, candidates, exclude)
        hnsw_recall.append(len(set(top_k(dot, exclude, 10).tolist()) & set(cand.tolist())) / 10)
    out = {"overlap@10": float(np.mean(overlaps)), "overlap@10_min": float(np.min(overlaps)),
           "users": len(users), "candidates": candidates, "ann": approx.ann.meta,
           "retrieval_users": ranker.retrieval_users, "rows_seconds": ranker.retrieval_seconds,
           "service_ready_seconds": round(ready_s, 1),
           "inprocess_ms": {k: _pcts(v) for k, v in times.items()}, "uptime": uptime()}
    if diagnostics:
        out["diagnostics"] = {"first_stage_ceiling": float(np.mean(ceiling)),
                              "taylor_ceiling": float(np.mean(taylor_ceiling)),
                              "hnsw_recall_of_dot_top10": float(np.mean(hnsw_recall))}
    return out


def first_stage_seeds(items: int, n_users: int, seeds: list[int], sample: int, counts: list[int],
                      factors: int, layers: str) -> list[dict]:
    """No index, no service: for random NeuMFs of several seeds, the share of the exact top 10
    among the exact dot-product top C of each first stage (the averaged Jacobian, and the
    first-order expansion at the mean user), over ``sample`` users outside the fitted sample."""
    from ncf.models import NeuMF
    from ncf.recommend import top_k
    from ncf.serve.retrieval import NCFRanker

    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = NeuMF(n_users, items, factors, tuple(int(x) for x in layers.split(","))).eval()
        ranker = NCFRanker(model)
        ranker.bind(ranker.item_features())
        rows = torch.from_numpy(ranker.retrieval_rows())
        a, o = ranker.linear_terms(np.arange(items))
        vectors = ranker.user_vectors()
        pool = np.setdiff1d(np.arange(n_users), ranker.retrieval_sample_indexes())
        users = np.random.default_rng(seed).choice(pool, min(sample, len(pool)), replace=False)
        kept = {(kind, c): [] for kind in ("averaged", "taylor") for c in counts}
        for u in users:
            truth = set(top_k(ranker.score(vectors[u]), None, 10).tolist())
            dot = (rows @ torch.from_numpy(ranker.retrieval_query(vectors[u]))).numpy()
            old = o + a @ vectors[u].astype(np.float64)
            for c in counts:
                kept["averaged", c].append(len(truth & set(top_k(dot, None, c).tolist())) / 10)
                kept["taylor", c].append(len(truth & set(top_k(old, None, c).tolist())) / 10)
        w_m = ranker.w_m.numpy()
        row = {"items": items, "seed": seed, "users": len(users), "rows_seconds": ranker.retrieval_seconds,
               "negative_output_weights": int((w_m < 0).sum()), "output_weights": len(w_m),
               **{f"{kind}@{c}": float(np.mean(v)) for (kind, c), v in kept.items()}}
        console.print(row)
        out.append(row)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Until ``ncf serve`` answers /healthz (a million-item run takes a while to load)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ncf serve exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"ncf serve did not answer on {url} within {timeout:.0f} s")


def _report(q: dict, n_users: int) -> None:
    ms = q["inprocess_ms"]
    console.print(f"overlap@10 HNSW + exact re-ranking vs exact: {q['overlap@10']:.3f} (min {q['overlap@10_min']:.1f}) "
                  f"over {n_users} users, {q['candidates']} candidates")
    if "diagnostics" in q:
        d = q["diagnostics"]
        console.print(f"  exact top 10 among the dot-product top {q['candidates']}: {d['first_stage_ceiling']:.3f} "
                      f"(first-order expansion at the mean user: {d['taylor_ceiling']:.3f}); HNSW finds "
                      f"{d['hnsw_recall_of_dot_top10']:.3f} of the dot product's top 10")
    console.print("  in-process ms p50/p99: " + ", ".join(f"{k} {v['p50']:.2f}/{v['p99']:.2f}" for k, v in ms.items()
                                                   if isinstance(v, dict)))
    console.print(f"  rows computed in {q.get('rows_seconds')} s ({q.get('retrieval_users')} users), HNSW built in "
                  f"{q['ann'].get('build_seconds')} s ({q['ann'].get('build_threads')} threads; M "
                  f"{q['ann'].get('m')}, efConstruction {q['ann'].get('ef_construction')}); service ready in "
                  f"{q['service_ready_seconds']} s; measured under load: {q['uptime']}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--seen", type=int, default=20)
    p.add_argument("--factors", type=int, default=8)
    p.add_argument("--layers", default="64,32,16,8")
    p.add_argument("--model", choices=("random", "trained-like"), default="random")
    p.add_argument("--like", type=Path, help="--model trained-like: a trained NeuMF run directory")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--sample", type=int, default=100, help="users compared with exact ranking")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the first-stage ceilings")
    p.add_argument("--build-threads", type=int, default=0,
                   help="faiss threads while building the index (0: faiss's default, one per core)")
    p.add_argument("--load", action="store_true", help="also drive ncf serve over HTTP")
    p.add_argument("--ann", default="auto", help="--ann of the spawned ncf serve (auto: HNSW from 100,000 items)")
    p.add_argument("--rates", default="200")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--unknown", type=float, default=0.0, help="share of requests for users the model lacks")
    p.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for ncf serve to start")
    p.add_argument("--skip-quality", action="store_true", help="reuse OUT/ann_bench.json's quality part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-stage-seeds", help="only: the first stages' ceilings on random NeuMFs of these "
                                               "seeds (comma-separated), no index; appended to OUT/seeds.jsonl")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.first_stage_seeds:
        counts = sorted({200, 500, 1000, a.candidates})
        rows = first_stage_seeds(a.items, a.users, [int(x) for x in a.first_stage_seeds.split(",")], a.sample,
                                 counts, a.factors, a.layers)
        a.out.mkdir(parents=True, exist_ok=True)
        with open(a.out / "seeds.jsonl", "a") as fh:
            for row in rows:
                fh.write(json.dumps({**row, "uptime": uptime()}) + "\n")
        return {"seeds": rows}
    if a.build_threads:
        import faiss

        faiss.omp_set_num_threads(a.build_threads)
    if a.model == "trained-like" and a.like is None:
        p.error("--model trained-like needs --like RUN")
    if not (a.out / "model.safetensors").exists():
        t0 = time.perf_counter()
        write_run(a.out, a.users, a.items, a.seen, a.factors, a.layers, a.seed, a.model, a.like)
        console.print(f"wrote a {a.model} NeuMF run with {a.items:,} items in {time.perf_counter() - t0:.0f}s")
    path = a.out / "ann_bench.json"
    result = json.loads(path.read_text()) if path.exists() and a.skip_quality else {
        "items": a.items, "users": a.users, "model": a.model}
    if not a.skip_quality:
        from ncf.checkpoint import load_model
        from ncf.serve.retrieval import make_ranker

        # users outside the sample whose Jacobians the first stage averages
        fitted = make_ranker(load_model(a.out)).retrieval_sample_indexes()
        pool = np.setdiff1d(np.arange(a.users), fitted) + 1  # raw ids are 1..users
        users = np.random.default_rng(a.seed).choice(pool, min(a.sample, len(pool)), replace=False).tolist()
        result["quality"] = quality(a.out, users, a.candidates, not a.no_diagnostics)
        path.write_text(json.dumps(result, indent=2) + "\n")
    if "quality" in result:
        _report(result["quality"], result["quality"]["users"])
    if a.load:
        rows = a.out / "load.json"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "ncf", "serve", str(a.out), "--port", str(port), "--no-journal",
                 "--candidates", str(a.candidates), "--ann", a.ann]
        proc = subprocess.Popen(serve)
        try:
            _wait(url, proc, a.start_timeout)
            cmd = [sys.executable, str(Path(__file__).with_name("serve_load.py")), "load", "--run", str(a.out),
                   "--url", url, "--rates", a.rates, "--duration", str(a.duration), "--mix", "rec=1",
                   "--unknown", str(a.unknown), "--json", str(rows)]
            before = uptime()
            subprocess.run(cmd, check=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        result["http"] = {"rows": json.loads(rows.read_text()), "uptime_before": before, "uptime_after": uptime(),
                          "serve": " ".join(serve[1:]), "command": " ".join(cmd[1:])}
        console.print(f"measured under load: before {before}; after {result['http']['uptime_after']}")
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
