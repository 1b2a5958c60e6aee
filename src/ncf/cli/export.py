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
    opset: int = typer.Option(17, "--opset", help="ONNX opset version (7 and up: what onnxruntime runs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file (never one of "
                                   "a run directory's own files)."),
):
    """Write the scoring graph of a GMF / MLP / NeuMF run: (users, items) indexes -> logits."""
    from ncf.checkpoint import load_model
    from ncf.export import FORMATS, check_opset, export_onnx
    from ncf.outputs import prepare_output_file

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_opset(opset)
    run_dir(directory)
    prepare_output_file(out or directory / "model.onnx", overwrite, run_name="model.onnx")  # before loading
    model = load_model(directory)
    path = export_onnx(model, out or directory / "model.onnx", opset, overwrite=overwrite)
    typer.echo(f"wrote {path} ({model.name}, {model.n_users} users, {model.n_items} items; "
               f"inputs users, items: int64 indexes from {directory / 'idmap.json'}; output logits)")
