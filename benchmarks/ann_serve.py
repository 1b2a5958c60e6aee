"""Approximate retrieval on a large synthetic catalogue (issue 18).

Writes a run directory holding a random NeuMF with ``--items`` items (1,000,000) and
``--users`` users (each with ``--seen`` random training items), then:

1. quality, in process: for ``--sample`` users, the service's top 10 with the HNSW first stage
   (``--ann on``, ``--candidates``) against exact ranking of all items by the full model
   (``--ann off``, no candidates): overlap@10, and the in-process latency of each;
2. (with ``--load``) latency over HTTP: ``benchmarks/serve_load.py load --spawn`` against
   ``ncf serve`` (``--ann auto`` picks HNSW at this size; the index persisted in step 1 is
   loaded, not rebuilt) at ``--rates`` requests per second.

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

console = Console()


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def write_run(out: Path, n_users: int, n_items: int, seen: int, factors: int, layers: str, seed: int) -> None:
    import scipy.sparse as sp

    from ncf.checkpoint import save_model, save_run_data
    from ncf.data.interactions import IdMap
    from ncf.models import NeuMF

    torch.manual_seed(seed)
    model = NeuMF(n_users, n_items, factors, tuple(int(x) for x in layers.split(","))).eval()
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_users), seen)
    cols = np.concatenate([rng.choice(n_items, seen, replace=False) for _ in range(n_users)])
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    out.mkdir(parents=True, exist_ok=True)
    save_run_data(out, IdMap(list(range(1, n_users + 1))), IdMap(list(range(1, n_items + 1))), matrix, None)
    save_model(out, model, {"data": {"source": f"synthetic {n_users} x {n_items}"}})


def quality(run: Path, users: list[int], candidates: int) -> dict:
    from ncf.serve.app import OnlineService
    from ncf.serve.store import InMemoryStore

    t0 = time.perf_counter()
    approx = OnlineService(run, InMemoryStore(), candidates=candidates, ann="on")
    approx.ensure_ready()
    ready_s = time.perf_counter() - t0
    exact = OnlineService(run, InMemoryStore(), ann="off")
    exact.ensure_ready()
    overlaps, t_approx, t_exact = [], [], []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("exact vs HNSW", total=len(users))
        for u in users:
            t = time.perf_counter()
            a = [x["item"] for x in approx.recommend(str(u), 10)["items"]]
            t_approx.append(1e3 * (time.perf_counter() - t))
            t = time.perf_counter()
            e = [x["item"] for x in exact.recommend(str(u), 10)["items"]]
            t_exact.append(1e3 * (time.perf_counter() - t))
            overlaps.append(len(set(a) & set(e)) / 10)
            prog.advance(task)
    return {"overlap@10": float(np.mean(overlaps)), "overlap@10_min": float(np.min(overlaps)),
            "users": len(users), "candidates": candidates, "ann": approx.ann.meta,
            "service_ready_seconds": round(ready_s, 1),
            "inprocess_ms": {"hnsw_p50": float(np.percentile(t_approx, 50)),
                             "hnsw_p99": float(np.percentile(t_approx, 99)),
                             "exact_p50": float(np.percentile(t_exact, 50)),
                             "exact_p99": float(np.percentile(t_exact, 99))},
            "uptime": uptime()}


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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--seen", type=int, default=20)
    p.add_argument("--factors", type=int, default=8)
    p.add_argument("--layers", default="64,32,16,8")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--sample", type=int, default=100, help="users compared with exact ranking")
    p.add_argument("--load", action="store_true", help="also drive ncf serve over HTTP")
    p.add_argument("--rates", default="200")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--unknown", type=float, default=0.0, help="share of requests for users the model lacks")
    p.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for ncf serve to start")
    p.add_argument("--skip-quality", action="store_true", help="reuse OUT/ann_bench.json's quality part")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if not (a.out / "model.safetensors").exists():
        t0 = time.perf_counter()
        write_run(a.out, a.users, a.items, a.seen, a.factors, a.layers, a.seed)
        console.print(f"wrote a random NeuMF run with {a.items:,} items in {time.perf_counter() - t0:.0f}s")
    users = np.random.default_rng(a.seed).choice(np.arange(1, a.users + 1), a.sample, replace=False).tolist()
    path = a.out / "ann_bench.json"
    result = json.loads(path.read_text()) if path.exists() and a.skip_quality else {"items": a.items,
                                                                                    "users": a.users}
    if not a.skip_quality:
        result["quality"] = quality(a.out, users, a.candidates)
        path.write_text(json.dumps(result, indent=2) + "\n")
    q = result["quality"]
    console.print(f"overlap@10 HNSW vs exact: {q['overlap@10']:.3f} (min {q['overlap@10_min']:.1f}) over {len(users)} "
                  f"users; in-process p50/p99 HNSW {q['inprocess_ms']['hnsw_p50']:.2f}/"
                  f"{q['inprocess_ms']['hnsw_p99']:.2f} ms, exact {q['inprocess_ms']['exact_p50']:.0f}/"
                  f"{q['inprocess_ms']['exact_p99']:.0f} ms; HNSW built in {q['ann'].get('build_seconds')} s; "
                  f"measured under load: {q['uptime']}")
    if a.load:
        rows = a.out / "load.json"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "ncf", "serve", str(a.out), "--port", str(port), "--no-journal",
                 "--candidates", str(a.candidates), "--ann", "auto"]
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
