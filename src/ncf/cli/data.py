"""``ncf data``: download and describe datasets."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ncf.cli import app
from ncf.cli.common import DataDirOpt, JsonOpt, data_config, print_json

data_app = typer.Typer(help="Download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("info")
def info(
    source: str = typer.Argument(..., help="Dataset name (ml-100k, ncf-ml-1m, ...) or a ratings file."),
    data_dir: str = DataDirOpt,
    json_out: bool = JsonOpt,
    user_col: str = typer.Option(None, "--user-col"),
    item_col: str = typer.Option(None, "--item-col"),
    rating_col: str = typer.Option(None, "--rating-col"),
    time_col: str = typer.Option(None, "--time-col"),
    sep: str = typer.Option(None, "--sep"),
    min_rating: float = typer.Option(None, "--min-rating"),
    on_bad_lines: str = typer.Option("error", "--on-bad-lines", help="error | skip (skipped rows are counted)"),
):
    """Users, items, interactions, density and split sizes of SOURCE."""
    from ncf.data.datasets import load_dataset

    ds = load_dataset(data_config(source, data_dir, user_col=user_col, item_col=item_col,
                                  rating_col=rating_col, time_col=time_col, sep=sep,
                                  min_rating=min_rating, on_bad_lines=on_bad_lines))
    out = {
        "source": source,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "n_interactions": ds.n_interactions,
        "density": ds.n_interactions / (ds.n_users * ds.n_items),
        "split": {"train": ds.train.nnz, "valid": len(ds.valid) if ds.valid else 0, "test": len(ds.test),
                  "test_candidates": int(ds.test.candidates.shape[1] - 1)},
        "report": ds.report,
    }
    if json_out:
        print_json(out)
        return
    t = Table(title=f"ncf data info {source}")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k in ("n_users", "n_items", "n_interactions"):
        t.add_row(k, f"{out[k]:,}")
    t.add_row("density", f"{out['density']:.4%}")
    for k, v in out["split"].items():
        t.add_row(f"split {k}", f"{v:,}")
    Console().print(t)
    Console().print(f"report: {ds.report}")
