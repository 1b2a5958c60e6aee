"""``ncf export DIR --format onnx``: a run's scoring graph for other runtimes."""

from __future__ import annotations

from pathlib import Path

import typer

from ncf.cli.app import app
from ncf.cli.common import run_dir
from ncf.errors import ConfigError


@app.command("export")
def export_cmd(
    directory: Path = typer.Argument(..., help="Run directory (from `ncf train`)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Path = typer.Option(None, "--out", help="Output file (default: DIR/model.onnx)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
):
    """Write the scoring graph of a GMF / MLP / NeuMF run: (users, items) indexes -> logits."""
    from ncf.checkpoint import load_model
    from ncf.export import FORMATS, export_onnx

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run_dir(directory)
    model = load_model(directory)
    path = export_onnx(model, out or directory / "model.onnx", opset)
    typer.echo(f"wrote {path} ({model.name}, {model.n_users} users, {model.n_items} items; "
               f"inputs users, items: int64 indexes from {directory / 'idmap.json'}; output logits)")
