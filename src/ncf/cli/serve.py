"""``ncf serve DIR`` (the HTTP service) and ``ncf store load DIR --redis URL``."""

from __future__ import annotations

from pathlib import Path

import typer

from ncf.cli import app
from ncf.cli.common import run_dir

store_app = typer.Typer(help="The feature store that `ncf serve` reads (Redis).", no_args_is_help=True)
app.add_typer(store_app, name="store")

PrefixOpt = typer.Option("ncf", "--prefix", help="Key prefix in Redis.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("serve")
def serve_cmd(
    directory: Path = typer.Argument(..., help="Run directory (from `ncf train`)."),
    redis: str = typer.Option(None, "--redis", help="redis://host:port/db; default: the in-process store."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    candidates: int = typer.Option(0, "--candidates",
                                   help="Two stages: rank only this many dot-product candidates (0: exact)."),
    max_k: int = typer.Option(1000, "--max-k", help="Largest k a request may ask for."),
    journal: Path = typer.Option(None, "--journal",
                                 help="In-process store: file of recorded interactions "
                                      "(default DIR/interactions.jsonl)."),
    no_journal: bool = typer.Option(False, "--no-journal", help="In-process store: keep interactions in memory only."),
    prefix: str = PrefixOpt,
    ann: str = typer.Option("auto", "--ann",
                            help="Approximate first stage (faiss HNSW, persisted beside the run): auto (from "
                                 "100,000 items on), on, off."),
    foldin: bool = typer.Option(True, "--fold-in/--no-fold-in",
                                help="Recorded interactions update the user's vector (off: they only filter)."),
    threads: int = typer.Option(1, "--threads", help="torch threads per process (requests are small: 1 is best)."),
    log_level: str = typer.Option("warning", "--log-level"),
):
    """Serve recommendations over HTTP (FastAPI; OpenAPI schema at /docs and /openapi.json)."""
    import torch
    import uvicorn

    from ncf.serve.app import create_app
    from ncf.serve.store import InMemoryStore, RedisStore, StoreUnavailable

    run_dir(directory)
    if threads >= 1:
        torch.set_num_threads(threads)
    if redis:
        store = RedisStore(redis, prefix=prefix)
    else:
        store = InMemoryStore(None if no_journal else (journal or directory / "interactions.jsonl"))
    try:
        application = create_app(directory, store, candidates=candidates, max_k=max_k, foldin=foldin, ann=ann)
    except StoreUnavailable as e:
        _fail(str(e))
    typer.echo(f"serving {directory} on http://{host}:{port} ({store.describe()['store']} store)", err=True)
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)


@store_app.command("load")
def store_load_cmd(
    directory: Path = typer.Argument(..., help="Run directory (from `ncf train`)."),
    redis: str = typer.Option(..., "--redis", help="redis://host:port/db"),
    prefix: str = PrefixOpt,
):
    """Write a run's user embeddings, seen-sets and item embeddings into Redis."""
    from rich.progress import Progress

    from ncf.serve.app import OnlineService
    from ncf.serve.store import RedisStore, StoreUnavailable

    run_dir(directory)
    store = RedisStore(redis, prefix=prefix, timeout=10.0)
    service = OnlineService(directory, store)
    try:
        store.ping()
        with Progress(transient=True) as prog:
            task = prog.add_task("loading users", total=service.rec.model.n_users)
            service.load_store(lambda done, total: prog.update(task, completed=done, total=total))
    except StoreUnavailable as e:
        _fail(str(e))
    typer.echo(f"loaded run {service.run_id} ({service.rec.model.n_users} users, {service.rec.n_items} items) "
               f"into {store.describe()['url']} under prefix {prefix!r}")
