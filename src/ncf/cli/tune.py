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
    models: str = typer.Option("gfcf,bspm,ease,itemknn,ials,mf,ensemble", "--models", help="Comma-separated models to "
                               "search: any registry model with a search space (ensemble: a blend of the best "
                               "others, weights chosen on validation)."),
    protocol: str = typer.Option(None, "--protocol", help="Validation protocol that chooses: sampled "
                                 "(1 + 99 candidates) | full (every unseen item) | topk (the top-k metrics over "
                                 "every held-out item of a user). Default: topk where the holdouts have several "
                                 "items a user (--split ratio, a given split...), else sampled."),
    metric: str = typer.Option(None, "--metric", help="Validation metric that chooses everything: NAME@K for "
                               "topk (recall, ndcg, precision, map, hr, mrr; default recall@20), else ndcg@10 "
                               "(default) | hr@10."),
    split: str = typer.Option(None, "--split", help="loo (default: latest item a user) | temporal (globally latest "
                              "10% test, 10% before valid) | ratio | ratio-time (8:1:1 a user, random / by time); "
                              "a given split (--train/--test) is its own."),
    refit: str = typer.Option("auto", "--refit", help="Train the chosen model again on train + validation for "
                              "DIR/best and test: auto (where validation comes just before test in time: loo on "
                              "a timestamped source, temporal, ratio-time; and where it is a random share of each "
                              "user's items: ratio, a given split, refitted on the whole training file) | yes | no."),
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
    Console().print(model_table(s, dataset or train_file))
    Console().print(test_table(s))
    typer.echo(f"best run: {s['best']}{' (refitted on train + validation)' if s.get('refit') else ''}; "
               f"summary, trials.csv, tune.png in {out}")


def model_table(s: dict, dataset: str) -> Table:
    """Each model's best trial on validation (what chose), and why a model has none."""
    t = Table(title=f"{dataset}: best trial of each model (chosen on valid {s['select_by'][6:]})")
    for col in ("model", "trials", "failed", f"valid {s['metric']}", "params"):
        t.add_column(col, justify="left" if col in ("model", "params") else "right")
    for name, r in s["per_model"].items():
        score = f"{r['valid_score']:.4f}" if r.get("valid_score") is not None else r.get("why", "-")
        t.add_row(name + (" (chosen)" if name == s["model"] else ""), str(r["trials"]), str(r.get("failed", 0)),
                  score, str(r.get("params") or ""))
    return t


def test_table(s: dict) -> Table:
    """DIR/best's test metrics (read once, after the choice): the top-k metrics at k 10 and 20, or
    the sampled and full protocols' HR@10 / NDCG@10."""
    what = f"{s['model']}{' refitted on train + validation' if s.get('refit') else ''}"
    test = s["test"]
    if "sampled" not in test:
        t = Table(title=f"test of {what}")
        names = ("recall", "ndcg", "precision", "map", "coverage")
        t.add_column("k", justify="right")
        for n in names:
            t.add_column(n, justify="right")
        for k in (10, 20):
            t.add_row(str(k), *(f"{test['topk'][f'{n}@{k}']:.4f}" for n in names))
        return t
    t = Table(title=f"test of {what}")
    cols = [("sampled", "hr@10"), ("sampled", "ndcg@10"), ("full", "hr@10"), ("full", "ndcg@10")]
    if "topk" in test:
        cols += [("topk", "recall@20"), ("topk", "ndcg@20")]
    for p, m in cols:
        t.add_column(f"{p} {m}", justify="right")
    t.add_row(*(f"{test[p][m]:.4f}" for p, m in cols))
    return t
