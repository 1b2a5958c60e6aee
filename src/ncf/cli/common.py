"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ncf.errors import CheckpointError, ConfigError

DataDirOpt = typer.Option(None, "--data-dir", help="Data directory (default: $NCF_DATA_DIR, else ~/.cache/ncf).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
# the layout of a ratings file given as SOURCE (train, compare, tune)
UserColOpt = typer.Option(None, "--user-col", help="User column of a ratings file (name or 0-based position).")
ItemColOpt = typer.Option(None, "--item-col", help="Item column of a ratings file.")
RatingColOpt = typer.Option(None, "--rating-col", help="Rating column (with --min-rating).")
TimeColOpt = typer.Option(None, "--time-col", help="Timestamp column (unix seconds or ISO dates): the split is by "
                          "time; without one, held-out items are drawn at random.")
SepOpt = typer.Option(None, "--sep", help="Field separator (default: sniffed).")
OnBadLinesOpt = typer.Option("error", "--on-bad-lines", help="error (default: stop at the first malformed row, "
                             "naming it) | skip (skip and count them).")
MinRatingOpt = typer.Option(None, "--min-rating", help="Keep only ratings >= this value.")


def parse_ks(values: list[str]) -> tuple[int, ...]:
    """``-k 5,20`` and ``-k 5 -k 20`` alike -> (5, 20)."""
    out = []
    for v in values:
        for part in str(v).split(","):
            try:
                k = int(part.strip())
            except ValueError:
                raise ConfigError(f"-k expects whole numbers (e.g. -k 10 or -k 5,20), got {v!r}") from None
            if k < 1:
                raise ConfigError(f"-k must be >= 1, got {k}")
            out.append(k)
    return tuple(dict.fromkeys(out))


def data_config(source: str, data_dir: str | None, **kw):
    """A DataConfig from CLI options (None: not given, the default applies)."""
    from ncf.data.datasets import DataConfig

    return DataConfig(source=source, data_dir=data_dir, **{k: v for k, v in kw.items() if v is not None})


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run directory")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: not a run directory (no config.json)")
    return path
