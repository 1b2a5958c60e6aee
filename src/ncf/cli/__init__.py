"""The ``ncf`` command line: a thin typer app over the library API.

Each sub-module registers its commands on ``app``; errors a user can cause (bad files,
bad flags, corrupt checkpoints) print one clear line and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="ncf",
    help="Neural collaborative filtering: train, evaluate and serve recommenders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# explicit registration, no discovery: each import adds its commands to `app`
from ncf.cli import compare as _compare  # noqa: E402,F401
from ncf.cli import data as _data  # noqa: E402,F401
from ncf.cli import items as _items  # noqa: E402,F401
from ncf.cli import rerank as _rerank  # noqa: E402,F401
from ncf.cli import serve as _serve  # noqa: E402,F401
from ncf.cli import train as _train  # noqa: E402,F401
from ncf.cli import tune as _tune  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors and errors a user can cause print one line, exit status 2."""
    try:  # recent typer releases vendor click under typer._click
        from typer._click import exceptions as cx
    except ImportError:  # older typer uses click itself
        from click import exceptions as cx

    from ncf.checkpoint import CheckpointError
    from ncf.data.readers import DataError

    try:
        result = app(args=argv, prog_name="ncf", standalone_mode=False)
    except cx.NoArgsIsHelpError:
        sys.exit(0)
    except cx.UsageError as e:
        where = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        typer.echo(f"error: {e.format_message()}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (DataError, CheckpointError, ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        typer.echo(f"error: {msg}", err=True)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)
