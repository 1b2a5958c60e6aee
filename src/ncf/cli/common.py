"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ncf.data.datasets import DataConfig

DataDirOpt = typer.Option(None, "--data-dir", help="Data directory (default: $NCF_DATA_DIR, else ~/.cache/ncf).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


def data_config(source: str, data_dir: str | None, **kw) -> DataConfig:
    return DataConfig(source=source, data_dir=data_dir, **{k: v for k, v in kw.items() if v is not None})


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a run directory (no config.json)")
    return path
