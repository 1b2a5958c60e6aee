"""``ncf rerank`` (business-constrained slates) and ``ncf rerank-attributes`` (MovieLens demo CSV)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ncf.cli.app import app
from ncf.cli.common import DataDirOpt, JsonOpt, print_json, run_dir
from ncf.console import console, tables


@app.command("rerank")
def rerank_cmd(
    directory: Path = typer.Argument(..., help="Run directory."),
    attributes: Path = typer.Option(..., "--attributes", help="CSV: item id, numeric columns, category."),
    constraint: list[str] = typer.Option(
        None, "--constraint", "-c",
        help="revenue>=X | revenue:COL>=X | mean:COL<=X | category:NAME<=SHARE | coverage>=N (repeatable)."),
    k: int = typer.Option(10, "-k", help="Slate size."),
    relevance: str = typer.Option("auto", "--relevance",
                                  help="auto (sigmoid for log-loss models, else refuse) | sigmoid | minmax"),
    missing: str = typer.Option("exclude", "--missing",
                                help="Items without attributes: exclude (never recommended) | zero (values 0)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip HR/NDCG (no dataset needed)."),
    save: bool = typer.Option(False, "--save", help="Write DIR/rerank.json for per-request re-ranking."),
    data_dir: str = DataDirOpt,
    json_out: bool = JsonOpt,
):
    """Every user's top-k slate maximising predicted relevance under global business constraints."""
    from ncf.rerank.offline import RunReranker

    run_dir(directory)
    err = console
    with err.status("re-ranking") as status:
        def say(msg: str) -> None:
            status.update(f"re-ranking: {msg}")

        rr = RunReranker(directory, attributes, k=k, relevance=relevance, missing=missing, data_dir=data_dir,
                         evaluate=not no_eval, progress=say)
        report, sol = rr.run(list(constraint or []), save=save)
    att = report["attributes"]
    if att["items_without_attributes"]:
        err.print(f"[yellow]{att['items_without_attributes']} of the run's items have no attributes "
                  f"(e.g. {att.get('without_attributes_examples', [])[:5]}): "
                  + ("never recommended" if missing == "exclude" else "treated as 0, no category") + "[/]")
    if att["unknown_rows"]:
        err.print(f"[yellow]{att['unknown_rows']} rows of {attributes} name items the run does not know "
                  f"(e.g. {att.get('unknown_examples', [])[:5]}): ignored[/]")
    if report["relevance"] == "minmax":
        err.print("[yellow]relevance is each user's min-max-scaled score, not a probability[/]")
    for m in sol.messages:
        err.print(f"[red]{m}[/]")
    if json_out:
        print_json(report)
    else:
        _print(report, k)
    if "saved" in report:
        err.print(f"multipliers written to {report['saved']}")
    if not report["feasible"]:
        raise typer.Exit(1)


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


def _print(r: dict, k: int) -> None:
    con = tables
    t = Table(title="constraints")
    for col in ("constraint", "target", "achieved", "met", "multiplier"):
        t.add_column(col, justify="left" if col == "constraint" else "right")
    for c in r["constraints"]:
        t.add_row(c["expr"], f"{c['target']:g}", f"{c['achieved']:.4f}", "yes" if c["satisfied"] else "NO",
                  f"{r['multipliers'][c['expr']]:.4g}")
    if r["constraints"]:
        con.print(t)
    m = Table(title=f"slates of {k} items")
    m.add_column("metric")
    m.add_column("unconstrained", justify="right")
    m.add_column("re-ranked", justify="right")
    keys = ["mean_relevance", "revenue", "coverage"] + [x for x in (f"hr@{k}", f"ndcg@{k}") if x in r]
    for key in keys:
        m.add_row(key, _fmt(r["unconstrained"].get(key)), _fmt(r.get(key)))
    con.print(m)


@app.command("rerank-attributes")
def rerank_attributes_cmd(
    directory: Path = typer.Argument(..., help="A MovieLens run directory (its items.json has genres)."),
    out: Path = typer.Option(..., "--out", help="CSV to write (item,price,margin,category)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic prices and margins."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
):
    """Write a demo attributes CSV: categories from genres, synthetic seeded prices (documented)."""
    from ncf.rerank.attributes import write_movielens_attributes

    run_dir(directory)
    path = write_movielens_attributes(directory, out, seed, overwrite=overwrite)
    typer.echo(f"attributes written to {path}")
