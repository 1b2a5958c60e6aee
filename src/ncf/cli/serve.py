"""``ncf serve DIR`` (the HTTP service) and ``ncf store load DIR --redis URL``."""

from __future__ import annotations

from pathlib import Path

import typer

from ncf.cli.app import app
from ncf.cli.common import print_json, run_dir
from ncf.serve.limits import MAX_BODY_BYTES, MAX_EVENTS_PER_USER, MAX_ITEMS_PER_REQUEST

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
    foldin_prior: float = typer.Option(None, "--fold-in-prior",
                                       help="Newton fold-in (GMF/MLP/NeuMF/MF): pull towards the starting vector "
                                            "(default: the run's foldin.json, else 0.1)."),
    threads: int = typer.Option(1, "--threads", help="torch threads per process (requests are small: 1 is best)."),
    log_level: str = typer.Option("warning", "--log-level"),
    api_key: str = typer.Option(None, "--api-key", envvar="NCF_API_KEY", show_envvar=True,
                                help="Require this key (X-API-Key header) on write endpoints."),
    api_key_reads: bool = typer.Option(False, "--api-key-reads", help="Require the API key on reads too."),
    max_body_bytes: int = typer.Option(MAX_BODY_BYTES, "--max-body-bytes",
                                       help="Larger request bodies are refused (413)."),
    max_events_per_user: int = typer.Option(MAX_EVENTS_PER_USER, "--max-events-per-user",
                                            help="Recorded interactions a user may have (409 beyond; 0: no limit)."),
    max_items_per_request: int = typer.Option(MAX_ITEMS_PER_REQUEST, "--max-items-per-request",
                                              help='Interactions one POST may record ({"items": [...]}; 422 beyond).'),
    events_namespace: str = typer.Option(None, "--events-namespace",
                                         help="Where recorded interactions live in the store (default: a hash "
                                              "of the run's item catalogue, shared by its retrainings)."),
    allow_volatile_store: bool = typer.Option(False, "--allow-volatile-store",
                                              help="Serve from a Redis without persistence (recorded "
                                                   "interactions are lost when it restarts)."),
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
        info = store.describe()
        if info.get("durability") == "volatile" and not allow_volatile_store:
            _fail(f"{info['url']}: {info['warning']}. Configure it (docs/RELIABILITY.md) or pass "
                  "--allow-volatile-store to serve anyway")
    else:
        store = InMemoryStore(None if no_journal else (journal or directory / "interactions.jsonl"))
    try:
        application = create_app(directory, store, candidates=candidates, max_k=max_k, foldin=foldin, ann=ann,
                                 api_key=api_key or None, api_key_reads=api_key_reads, max_body_bytes=max_body_bytes,
                                 max_events_per_user=max_events_per_user, max_items_per_request=max_items_per_request,
                                 events_namespace=events_namespace, foldin_prior=foldin_prior)
    except StoreUnavailable as e:
        _fail(str(e))
    info = store.describe()
    typer.echo(f"serving {directory} on http://{host}:{port} ({info['store']} store, durability "
               f"{info.get('durability')}; API key {'required' if api_key else 'not set'})", err=True)
    if info.get("warning"):
        typer.echo(f"warning: {info['warning']}", err=True)
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)


@store_app.command("load")
def store_load_cmd(
    directory: Path = typer.Argument(..., help="Run directory (from `ncf train`)."),
    redis: str = typer.Option(..., "--redis", help="redis://host:port/db"),
    prefix: str = PrefixOpt,
    json_out: bool = typer.Option(False, "--json", help="Print what was loaded as JSON."),
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
    if json_out:
        print_json({"run": service.run_id, "users": service.rec.model.n_users, "items": service.rec.n_items,
                    "redis": store.describe()["url"], "prefix": prefix})
        return
    typer.echo(f"loaded run {service.run_id} ({service.rec.model.n_users} users, {service.rec.n_items} items) "
               f"into {store.describe()['url']} under prefix {prefix!r}")
