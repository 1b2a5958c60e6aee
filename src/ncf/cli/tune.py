"""``ncf tune``: search the registry's models on the validation holdout within a time budget
(implemented in :mod:`ncf.tune`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
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
from ncf.errors import ConfigError


@app.command("tune")
def tune_cmd(
    dataset: str = typer.Option(None, "--dataset", help="Dataset name or ratings file."),
    train_file: Path = TrainFileOpt,
    test_file: Path = TestFileOpt,
    valid_file: Path = ValidFileOpt,
    layout: str = LayoutOpt,
    valid_ratio: float = ValidRatioOpt,
    time_budget: float = typer.Option(..., "--time-budget", help="Wall-clock seconds for the whole search."),
    out: Path = typer.Option(..., "--out", help="Directory for study.sqlite3, summary.json, best/, trials.csv, "
                             "tune.png, runs/ (rerun on the same directory to resume)."),
    models: str = typer.Option("ease,itemknn,ials,mf,ensemble", "--models", help="Comma-separated models to "
                               "search (ensemble: a blend of the best others, weights chosen on validation)."),
    protocol: str = typer.Option("sampled", "--protocol", help="Validation protocol that chooses: sampled "
                                 "(1 + 99 candidates) | full (every unseen item)."),
    metric: str = typer.Option("ndcg@10", "--metric", help="ndcg@10 | hr@10 (validation, chooses everything)."),
    split: str = typer.Option(None, "--split", help="loo (default: latest item a user) | temporal (globally latest "
                              "10% test, 10% before valid) | ratio | ratio-time (8:1:1 a user, random / by time); "
                              "a given split (--train/--test) is its own."),
    refit: str = typer.Option("auto", "--refit", help="Train the chosen model again on train + validation for "
                              "DIR/best and test: auto (where validation comes just before test in time: loo on "
                              "a timestamped source, temporal, ratio-time) | yes | no."),
    epochs: int = typer.Option(30, "--epochs", help="Most epochs of an SGD trial (early stopping on validation)."),
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
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars (one line per trial and epoch still)."),
    as_json: bool = JsonOpt,
):
    """Find the best model and hyperparameters for a dataset (Optuna, validation only)."""
    from ncf.tune import tune

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ConfigError("--models needs at least one model name")
    if metric not in ("ndcg@10", "hr@10"):
        raise ConfigError(f"--metric must be ndcg@10 or hr@10, got {metric!r}")
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if split == "none":
        raise ConfigError("ncf tune chooses on validation and reports test; --split none holds nothing out (tune "
                          "first, then `ncf train --split none` with the chosen settings)")
    dcfg = data_config(dataset, data_dir, train_file, test_file, valid_file, layout=layout, valid_ratio=valid_ratio,
                       seed=seed, split=split, min_rating=min_rating, user_col=user_col,
                       item_col=item_col, rating_col=rating_col, time_col=time_col, sep=sep,
                       on_bad_lines=on_bad_lines)
    s = tune(dcfg, out, time_budget, names, protocol, metric=metric, seed=seed, epochs=epochs, threads=threads,
             device=device, progress=not quiet, refit=refit)
    if as_json:
        print_json(s)
        return
    t = Table(title=f"{dataset or train_file}: best run of each model (chosen on valid {protocol} {metric})")
    multi = "topk" in s["test"]  # several test items a user: the top-k metrics
    cols = (("topk", "recall@10"), ("topk", "precision@10"), ("topk", "map@10"), ("topk", "ndcg@10"),
            ("topk", "coverage@10")) if multi else (("sampled", "hr@10"), ("sampled", "ndcg@10"),
                                                      ("full", "hr@10"), ("full", "ndcg@10"))
    for col in ("model", "trials", f"valid {metric}", *(f"test {p} {m.upper()}" for p, m in cols)):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, r in s["per_model"].items():
        tt = r["test"]
        t.add_row(name + (" (chosen)" if name == s["model"] else ""), str(r["trials"]), f"{r['valid_score']:.4f}",
                  *(f"{tt[p][m]:.4f}" for p, m in cols))
    if s.get("refit"):
        tt = s["test"]
        t.add_row(f"{s['model']} refitted", "", "", *(f"{tt[p][m]:.4f}" for p, m in cols))
    Console().print(t)
    typer.echo(f"best run: {s['best']}{' (refitted on train + validation)' if s.get('refit') else ''}; "
               f"summary, trials.csv, tune.png in {out}")
