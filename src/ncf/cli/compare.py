"""``ncf compare``: tune, train and evaluate several models; write a comparison report
(implemented in :mod:`ncf.compare`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.table import Table

from ncf.cli.app import app
from ncf.cli.common import (
    DataDirOpt,
    ItemColOpt,
    JsonOpt,
    LayoutOpt,
    MinRatingOpt,
    OnBadLinesOpt,
    RatingColOpt,
    SepOpt,
    TestFileOpt,
    TimeColOpt,
    TrainFileOpt,
    UserColOpt,
    ValidFileOpt,
    ValidRatioOpt,
    data_config,
    print_json,
)
from ncf.console import tables
from ncf.errors import ConfigError

DEFAULT_MODELS = "pop,itemknn,ease,bpr,ials,gmf,mlp,neumf"


@app.command("compare")
def compare_cmd(
    dataset: str = typer.Option(None, "--dataset", help="Dataset name or ratings file."),
    train_file: Path = TrainFileOpt,
    test_file: Path = TestFileOpt,
    valid_file: Path = ValidFileOpt,
    layout: str = LayoutOpt,
    valid_ratio: float = ValidRatioOpt,
    models: str = typer.Option(DEFAULT_MODELS, "--models", help="Comma-separated model names."),
    out: Path = typer.Option(..., "--out", help="Directory for results.json, results.md, results.png, runs/."),
    tune_budget: int = typer.Option(4, "--tune-budget", help="At most N configurations tried per model."),
    sgd_budget: int = typer.Option(None, "--sgd-budget", help="At most N configurations for the SGD-trained "
                                   "models (bpr, gmf, mlp, neumf); default: --tune-budget."),
    epochs: int = typer.Option(20, "--epochs", help="Most epochs for SGD-trained models (early stopping on valid)."),
    patience: int = typer.Option(3, "--patience", help="Early-stop patience for SGD-trained models (0: off)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: all cores)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    data_dir: str = DataDirOpt,
    min_rating: float = MinRatingOpt,
    user_col: str = UserColOpt,
    item_col: str = ItemColOpt,
    rating_col: str = RatingColOpt,
    time_col: str = TimeColOpt,
    sep: str = SepOpt,
    on_bad_lines: str = OnBadLinesOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    json_out: bool = JsonOpt,
):
    """Compare models, each tuned on the validation holdout, under the sampled and full protocols."""
    from ncf.compare import compare, parse_models

    names = parse_models(models)
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    dcfg = data_config(dataset, data_dir, train_file, test_file, valid_file, layout=layout, valid_ratio=valid_ratio,
                       seed=seed, min_rating=min_rating, user_col=user_col, item_col=item_col,
                       rating_col=rating_col, time_col=time_col, sep=sep, on_bad_lines=on_bad_lines)
    command = "ncf " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["compare"] else None
    results = compare(dcfg, names, out, tune_budget=tune_budget, epochs=epochs, patience=patience, seed=seed,
                      threads=threads, device=device, progress=not quiet, command=command,
                      sgd_budget=sgd_budget)
    if json_out:
        print_json(results)
        return
    t = Table(title=f"{dataset or train_file}: test metrics (tuned on validation)")
    for col in ("model", "sampled HR@10", "sampled NDCG@10", "full HR@10", "full NDCG@10", "order flips with"):
        t.add_column(col, justify="left" if col in ("model", "order flips with") else "right")
    for n, r in results.items():
        flips = sorted(set(r["reversed_with"]["hr@10"]) | set(r["reversed_with"]["ndcg@10"]))
        t.add_row(n, *(f"{r[p][m]:.4f}" for p in ("sampled", "full") for m in ("hr@10", "ndcg@10")),
                  ", ".join(flips) or "-")
    tables.print(t)
    typer.echo(f"results written to {out}/results.json, results.md, results.png")
