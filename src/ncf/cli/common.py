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
# a given split: the user's own training and test files instead of --dataset (train, evaluate's run
# config, tune, compare, data info)
TrainFileOpt = typer.Option(None, "--train", help="Training file of a given split (with --test; instead of "
                            "--dataset): any ratings file ncf reads, or adjacency lists (user item item ...).")
TestFileOpt = typer.Option(None, "--test", help="Test file of a given split: read only by evaluation; pairs "
                           "whose user or item --train never saw are left out and counted.")
ValidFileOpt = typer.Option(None, "--valid", help="Validation file of a given split (default: carved from "
                            "--train, --valid-ratio of each user's items, seeded).")
LayoutOpt = typer.Option(None, "--layout", help="adjacency (lines of `user item item ...`) | table (columns); "
                         "default: detected.")
ValidRatioOpt = typer.Option(None, "--valid-ratio", help="Given split without --valid: share of each user's "
                             "training items carved for validation (default 0.1).")


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


def data_config(source: str | None, data_dir: str | None, train_file: Path | str | None = None,
                test_file: Path | str | None = None, valid_file: Path | str | None = None,
                source_flag: str = "--dataset", **kw):
    """A DataConfig from CLI options (None: not given, the default applies): ``source`` is
    ``--dataset``; ``train_file`` / ``test_file`` / ``valid_file`` the files of a given split
    (``--train``, ``--test``, ``--valid``), the other way to name the data."""
    from ncf.data.datasets import DataConfig

    kw = {k: v for k, v in kw.items() if v is not None}
    files = (("--train", train_file), ("--test", test_file), ("--valid", valid_file))
    if source is not None and any(v is not None for _, v in files):
        given = ", ".join(f for f, v in files if v is not None)
        raise ConfigError(f"{source_flag} and {given} both name the data: {source_flag} lets ncf split it, "
                          "--train FILE --test FILE is a split you give; use one")
    if source is None and train_file is None:
        if test_file is not None or valid_file is not None:
            raise ConfigError(f"{'--test' if test_file is not None else '--valid'} needs --train FILE (a given split)")
        raise ConfigError("name the data: --dataset SOURCE (a dataset name or a ratings file, split by ncf), or "
                          "--train FILE --test FILE (a given split)")
    if source is None and test_file is None and kw.get("split") != "none":
        raise ConfigError("--train FILE needs --test FILE (a given split), or --split none to train on all of it; "
                          "--dataset FILE lets ncf split one file")
    return DataConfig(source=str(source if source is not None else train_file), data_dir=data_dir,
                      test_file=None if test_file is None else str(test_file),
                      valid_file=None if valid_file is None else str(valid_file), **kw)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run directory")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: not a run directory (no config.json)")
    return path
