"""The ``ncf`` command line: a thin typer app over the library API.

Each sub-module registers its commands on ``app``; errors a user can cause (bad files,
bad flags, corrupt checkpoints) print one clear line and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

# explicit registration, no discovery: each import adds its commands to `app`
from ncf.cli import compare as _compare  # noqa: F401
from ncf.cli import data as _data  # noqa: F401
from ncf.cli import export as _export  # noqa: F401
from ncf.cli import items as _items  # noqa: F401
from ncf.cli import rerank as _rerank  # noqa: F401
from ncf.cli import serve as _serve  # noqa: F401
from ncf.cli import train as _train  # noqa: F401
from ncf.cli import tune as _tune  # noqa: F401
from ncf.cli.app import app


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors and ncf's own errors (:mod:`ncf.errors`: bad files, flags, ids,
    run directories) print one line and exit with status 2; anything else is a bug and keeps
    its traceback. Ctrl-C exits with 130."""
    try:  # recent typer releases vendor click under typer._click
        from typer._click import exceptions as cx
    except ImportError:  # older typer uses click itself
        from click import exceptions as cx

    from ncf.errors import NcfError

    try:
        result = app(args=argv, prog_name="ncf", standalone_mode=False)
    except cx.NoArgsIsHelpError:
        sys.exit(0)
    except cx.UsageError as e:
        where = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        typer.echo(f"error: {e.format_message()}{where}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except NcfError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)
