"""Serving benchmarks (issue 9).

``load``: drives a running ``ncf serve`` over loopback at fixed request rates (open loop:
request i is sent at t0 + i / rate whatever the earlier ones are doing), bounded by
``--duration`` seconds and ``--max-requests`` per rate; prints p50/p95/p99 and errors per
rate and plots them. ``--spawn`` starts the service itself (and stops it afterwards)::

    python benchmarks/serve_load.py load --run /tmp/serve-neumf --spawn --redis redis://127.0.0.1:6379/0 \
        --rates 50,100,200,400 --duration 20 --plot docs/serve_latency.png

``two-stage``: offline, no HTTP. For every user of a run, exact full ranking against two
stages (dot-product candidates, then the full model): overlap of the top 10 with the exact
top 10, HR@10 / NDCG@10 of the test item ranked among all unseen items, and latency per
user; ``--synthetic-items N`` adds the latency on a random model with N items::

    python benchmarks/serve_load.py two-stage /tmp/serve-neumf --candidates 50,100,200,500
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(width=140)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _ids(run: Path) -> tuple[list, list]:
    data = json.loads((run / "idmap.json").read_text())
    return data["users"], data["items"]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class _Http:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams: far less CPU per request than
    a full client, so that on a small machine the load generator is not what is measured."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _exchange(self, conn, data: bytes) -> int:
        reader, writer = conn
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length is None:
            raise ValueError("response without Content-Length")
        await reader.readexactly(length)
        return status

    async def request(self, method: str, path: str, body: dict | None) -> int:
        payload = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(payload)}\r\n"
                + ("Content-Type: application/json\r\n" if body is not None else "") + "\r\n")
        data = head.encode() + payload
        deadline = time.perf_counter() + self.timeout
        while self.idle:  # a kept-alive connection the server may have closed meanwhile (idle timeout)
            conn = self.idle.pop()
            try:
                status = await asyncio.wait_for(self._exchange(conn, data), self.timeout)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                conn[1].close()
                if getattr(e, "partial", b""):  # the server had started answering: a real error
                    raise
                continue  # closed before answering: retry on another connection, as HTTP clients do
            except BaseException:
                conn[1].close()
                raise
            self.idle.append(conn)
            return status
        conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), deadline - time.perf_counter())
        try:
            status = await asyncio.wait_for(self._exchange(conn, data), max(0.0, deadline - time.perf_counter()))
        except BaseException:
            conn[1].close()
            raise
        self.idle.append(conn)
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _drive(url: str, rate: float, n: int, duration: float, plan: list[tuple[str, str, dict | None]],
                 timeout: float) -> dict:
    lat, lag, errors, codes = [], [], 0, {}
    http = _Http(url, timeout)

    async def one(method: str, path: str, body: dict | None, due: float):
        nonlocal errors
        start = time.perf_counter()
        lag.append(start - due)
        try:
            code = await http.request(method, path, body)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            code = type(e).__name__
        lat.append(time.perf_counter() - start)
        codes[code] = codes.get(code, 0) + 1
        if not (isinstance(code, int) and 200 <= code < 300):
            errors += 1

    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rate
        if due - t0 > duration:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(*plan[i % len(plan)], due)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    http.close()
    ms = [x * 1000 for x in lat]
    return {"rate": rate, "sent": len(tasks), "errors": errors, "codes": {str(k): v for k, v in codes.items()},
            "achieved_rps": len(tasks) / wall, "p50_ms": _pct(ms, 50), "p95_ms": _pct(ms, 95),
            "p99_ms": _pct(ms, 99), "max_ms": max(ms, default=float("nan")),
            "send_lag_p99_ms": _pct([x * 1000 for x in lag], 99)}


def _plan(run: Path, n: int, mix: dict[str, float], k: int, unknown: float, seed: int) -> list:
    users, items = _ids(run)
    rng = random.Random(seed)
    kinds, weights = zip(*mix.items(), strict=True)
    plan = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        user = rng.choice(users) if rng.random() >= unknown else f"{10**9 + rng.randrange(10**6)}"
        if kind == "rec":
            plan.append(("GET", f"/v1/users/{user}/recommendations?k={k}", None))
        elif kind == "similar":
            plan.append(("GET", f"/v1/items/{rng.choice(items)}/similar?k={k}", None))
        elif kind == "post":
            plan.append(("POST", f"/v1/users/{user}/interactions", {"item": rng.choice(items)}))
        else:
            raise typer.BadParameter(f"--mix: unknown request kind {kind!r} (rec, similar, post)")
    return plan


def _cpu_seconds(proc: subprocess.Popen | None) -> float | None:
    """User + system CPU seconds of a spawned service (Linux /proc), or None."""
    import os

    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, IndexError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(run: Path, redis: str | None, extra: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "ncf", "serve", str(run), "--port", str(port), "--no-journal", *extra]
    if redis:
        cmd += ["--redis", redis]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ncf serve exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"ncf serve did not answer /healthz on {url} within 120 s")


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rates = [r["rate"] for r in rows]
    for q in ("p50", "p95", "p99"):
        ax.plot(rates, [r[f"{q}_ms"] for r in rows], marker="o", label=q)
    ax.axhline(10, color="grey", linestyle="--", label="10 ms target")
    ax.set(xlabel="offered load (requests/s)", ylabel="latency (ms)", title=title, yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    console.print(f"plot: {path}")


@app.command("load")
def load(
    run: Path = typer.Option(..., "--run", help="Run directory served (its id maps pick the users and items)."),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="Service URL (loopback only)."),
    spawn: bool = typer.Option(False, "--spawn", help="Start `ncf serve --run` on a free port and stop it after."),
    redis: str = typer.Option(None, "--redis", help="With --spawn: serve from this Redis."),
    candidates: int = typer.Option(0, "--candidates", help="With --spawn: two-stage candidates (0: exact)."),
    rates: str = typer.Option("50,100,200", "--rates", help="Requests per second, comma-separated."),
    duration: float = typer.Option(20.0, "--duration", help="Seconds per rate (upper bound)."),
    max_requests: int = typer.Option(5000, "--max-requests", help="Requests per rate (upper bound)."),
    mix: str = typer.Option("rec=0.9,similar=0.1", "--mix", help="Request kinds and weights: rec, similar, post."),
    k: int = typer.Option(10, "-k"),
    unknown: float = typer.Option(0.05, "--unknown", help="Fraction of requests for users the model lacks."),
    warmup: int = typer.Option(200, "--warmup", help="Requests sent (and not counted) before the first rate."),
    timeout: float = typer.Option(2.0, "--timeout", help="Client timeout per request (s); a timeout is an error."),
    seed: int = typer.Option(0, "--seed"),
    plot: Path = typer.Option(None, "--plot", help="PNG of p50/p95/p99 against the rate."),
    json_out: Path = typer.Option(None, "--json", help="Write the rows as JSON here."),
):
    """Fixed-rate load over loopback; prints p50/p95/p99 and errors per rate."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise typer.BadParameter(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}), got {host!r}")
    try:
        weights = {kv.split("=")[0]: float(kv.split("=")[1]) for kv in mix.split(",")}
    except (IndexError, ValueError):
        raise typer.BadParameter(f"--mix expects kind=weight,... got {mix!r}") from None
    proc = None
    if spawn:
        proc, url = _spawn(run, redis, ["--candidates", str(candidates)])
    try:
        plan = _plan(run, max(max_requests, warmup, 1), weights, k, unknown, seed)
        if warmup:
            asyncio.run(_drive(url, 100.0, warmup, 60.0, plan[::-1], timeout))
        rows = []
        with Progress(console=console, transient=True) as prog:
            task = prog.add_task("rates", total=len(rates.split(",")))
            for rate in (float(r) for r in rates.split(",")):
                cpu = _cpu_seconds(proc)
                row = asyncio.run(_drive(url, rate, max_requests, duration, plan, timeout))
                if cpu is not None:
                    row["server_cpu_ms_per_request"] = (_cpu_seconds(proc) - cpu) * 1000 / max(1, row["sent"])
                rows.append(row)
                prog.advance(task)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    table = Table(title=f"{url} mix {mix} k={k}" + (f" redis {redis}" if redis else "") + ", latencies in ms")
    for col in ("rate/s", "sent", "errors", "got/s", "p50", "p95", "p99", "max", "send lag p99", "server CPU/req"):
        table.add_column(col, justify="right")
    for r in rows:
        cpu = r.get("server_cpu_ms_per_request")
        table.add_row(f"{r['rate']:g}", str(r["sent"]), str(r["errors"]), f"{r['achieved_rps']:.1f}",
                      *(f"{r[c]:.2f}" for c in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "send_lag_p99_ms")),
                      "-" if cpu is None else f"{cpu:.2f}")
    console.print(table)
    for r in rows:
        if r["errors"]:
            console.print(f"rate {r['rate']:g}: responses {r['codes']}")
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))
    if plot:
        _plot(rows, plot, f"ncf serve, {run.name}" + (" + Redis" if redis else ""))


def _per_user(fn, users: np.ndarray) -> tuple[list, list[float]]:
    out, times = [], []
    for u in users:
        t = time.perf_counter()
        out.append(fn(int(u)))
        times.append((time.perf_counter() - t) * 1000)
    return out, times


@app.command("two-stage")
def two_stage(
    run: Path = typer.Argument(..., help="Run directory of a gmf, mlp or neumf model."),
    candidates: str = typer.Option("50,100,200,500", "--candidates"),
    k: int = typer.Option(10, "-k"),
    synthetic_items: int = typer.Option(0, "--synthetic-items", help="Also time a random NeuMF with this many items."),
    threads: int = typer.Option(1, "--threads"),
    json_out: Path = typer.Option(None, "--json"),
):
    """Recall lost and latency of two-stage retrieval against exact full ranking."""
    import torch

    from ncf.checkpoint import load_config, load_model
    from ncf.data.datasets import DataConfig, load_dataset
    from ncf.serve.retrieval import make_ranker, rank

    torch.set_num_threads(threads)
    model = load_model(run)
    ranker = make_ranker(model)
    if not ranker.can_retrieve:
        raise typer.BadParameter(f"{run}: model {model.name!r} has no dot-product part")
    ranker.bind(ranker.item_features())
    vectors = ranker.user_vectors()
    dataset = load_dataset(DataConfig(**load_config(run)["data"]))
    seen = dataset.seen()
    test = dataset.test
    target = dict(zip(test.users.tolist(), test.items.tolist(), strict=True))
    users = np.asarray(sorted(target))

    def masked(u: int) -> np.ndarray:
        m = np.zeros(model.n_items, dtype=bool)
        m[seen.indices[seen.indptr[u]:seen.indptr[u + 1]]] = True
        return m

    def quality(lists: list[np.ndarray]) -> tuple[float, float]:
        hr, ndcg = 0.0, 0.0
        for u, top in zip(users, lists, strict=True):
            hit = np.flatnonzero(top == target[int(u)])
            if len(hit):
                hr += 1
                ndcg += 1 / np.log2(hit[0] + 2)
        return hr / len(users), ndcg / len(users)

    rows = []
    exact, t_exact = _per_user(lambda u: rank(ranker, vectors[u], masked(u), k)[0], users)
    hr, nd = quality(exact)
    rows.append({"candidates": "exact", "overlap@10": 1.0, "hr@10": hr, "ndcg@10": nd,
                 "p50_ms": _pct(t_exact, 50), "p99_ms": _pct(t_exact, 99)})
    for c in (int(x) for x in candidates.split(",")):
        lists, times = _per_user(lambda u, c=c: rank(ranker, vectors[u], masked(u), k, c)[0], users)
        overlap = float(np.mean([len(np.intersect1d(a, b)) / max(1, len(b))
                                 for a, b in zip(lists, exact, strict=True)]))
        hr, nd = quality(lists)
        rows.append({"candidates": c, "overlap@10": overlap, "hr@10": hr, "ndcg@10": nd,
                     "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99)})
    table = Table(title=f"two stages vs exact, {run} ({len(users)} users, {model.n_items} items, "
                        f"test item among all unseen items)")
    for col in ("candidates", "overlap@10", "HR@10", "NDCG@10", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["candidates"]), f"{r['overlap@10']:.3f}", f"{r['hr@10']:.4f}", f"{r['ndcg@10']:.4f}",
                      f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
    console.print(table)
    synth = []
    if synthetic_items:
        from ncf.models import NeuMF

        h = model.hparams()
        big = NeuMF(1000, synthetic_items, h["factors"], h["layers"]).eval()
        r2 = make_ranker(big)
        r2.bind(r2.item_features())
        vec = r2.user_vectors()
        none = np.zeros(synthetic_items, dtype=bool)
        sample = np.arange(100)
        for c in [0, *(int(x) for x in candidates.split(","))]:
            _, times = _per_user(lambda u, c=c: rank(r2, vec[u], none, k, c)[0], sample)
            synth.append({"items": synthetic_items, "candidates": c or "exact",
                          "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99)})
        t2 = Table(title=f"latency on a random NeuMF with {synthetic_items} items (100 users)")
        for col in ("candidates", "p50 ms", "p99 ms"):
            t2.add_column(col, justify="right")
        for r in synth:
            t2.add_row(str(r["candidates"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}")
        console.print(t2)
    if json_out:
        json_out.write_text(json.dumps({"ml": rows, "synthetic": synth}, indent=2))


if __name__ == "__main__":
    app()
