"""``ncf similar`` (nearest items by cosine of item embeddings) and ``ncf plot items``
(t-SNE map of a run's item embeddings, PNG)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ncf.cli.app import app
from ncf.cli.common import JsonOpt, print_json, run_dir
from ncf.console import console, tables
from ncf.errors import ConfigError

plot_app = typer.Typer(help="Pictures of a run.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")


@app.command("similar")
def similar_cmd(
    directory: Path = typer.Argument(..., help="Run directory (item2vec, gmf, neumf, ... with item embeddings)."),
    item: str = typer.Option(..., "--item", help="Raw item id of the item to find neighbours of (as in the "
                             "ratings file, e.g. 50 for Star Wars in ml-100k)."),
    k: int = typer.Option(10, "-k", help="Number of items."),
    json_out: bool = JsonOpt,
):
    """Items nearest to --item ID by cosine of the run's item embeddings (raw ids in and out).

    Example: ncf similar runs/gmf --item 50 -k 10"""
    from ncf.recommend import Recommender

    run_dir(directory)
    if k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    rec = Recommender.from_run(directory)
    items = rec.similar(item, k)
    if json_out:
        print_json(items)
        return
    idx = rec.item_map.get(item)
    t = Table(title=f"nearest to item {rec.item_map.raw(idx)}" + (f": {rec.title(idx)}" if rec.title(idx) else ""))
    t.add_column("#", justify="right")
    t.add_column("item")
    t.add_column("title")
    t.add_column("cosine", justify="right")
    for n, it in enumerate(items, 1):
        t.add_row(str(n), str(it["item"]), it["title"] or "", f"{it['score']:.4f}")
    tables.print(t)


@plot_app.command("items")
def plot_items_cmd(
    directory: Path = typer.Argument(..., help="Run directory."),
    out: Path = typer.Option(None, "--out", help="PNG to write (default: DIR/items.png)."),
    max_items: int = typer.Option(0, "--max-items", help="Only the N most popular items (0: all)."),
    seed: int = typer.Option(0, "--seed", help="t-SNE seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    json_out: bool = JsonOpt,
):
    """2-D t-SNE map of the run's item embeddings, coloured by first genre."""
    from ncf.outputs import prepare_output_file
    from ncf.plots_items import plot_items

    run_dir(directory)
    if max_items < 0:
        raise ConfigError(f"--max-items must be >= 0, got {max_items}")
    if out is not None:  # said before the t-SNE runs
        prepare_output_file(out, overwrite, run_name="items.png")
    with console.status("t-SNE of the item embeddings ..."):
        res = plot_items(directory, out, max_items=max_items, seed=seed, overwrite=overwrite)
    if json_out:
        print_json(res)
        return
    typer.echo(f"{res['png']}: {res['items']} items drawn, {res['skipped']} without a vector left out")
