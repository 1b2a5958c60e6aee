"""The typer app that every ``ncf.cli`` module registers its commands on."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

# `ncf --help` lists the commands in the order a user works: get data, train, look at the run,
# search and compare models, serve and export; then the rest (in the order they were registered)
ORDER = ("data", "train", "evaluate", "recommend", "similar", "tune", "compare", "serve", "store", "export",
         "convert", "rerank", "rerank-attributes", "plot")


class WorkflowOrder(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), names.index(n)))


app = typer.Typer(
    name="ncf",
    cls=WorkflowOrder,
    help="Neural collaborative filtering: train, evaluate and serve recommenders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
