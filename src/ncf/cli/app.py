"""The typer app that every ``ncf.cli`` module registers its commands on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ncf",
    help="Neural collaborative filtering: train, evaluate and serve recommenders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
