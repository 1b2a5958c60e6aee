"""``ncf data``: download and describe datasets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ncf.cli.app import app
from ncf.cli.common import (
    DataDirOpt,
    JsonOpt,
    LayoutOpt,
    TestFileOpt,
    TrainFileOpt,
    ValidFileOpt,
    ValidRatioOpt,
    data_config,
    print_json,
)
from ncf.console import tables

data_app = typer.Typer(help="Download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("download")
def download(
    name: str = typer.Argument(..., help="ml-100k, ml-1m, ml-20m, ml-25m, ml-latest-small (or ml-10m, ml-latest)."),
    data_dir: str = DataDirOpt,
    url: str = typer.Option(None, "--url", help="Base URL of the archives (default: $NCF_DOWNLOAD_URL, or GroupLens)"),
    force: bool = typer.Option(False, "--force", help="Download again and replace an existing folder."),
    json_out: bool = JsonOpt,
):
    """Fetch NAME.zip, verify its published MD5 and unpack it into DATA_DIR/NAME atomically.

    Offline, or behind a firewall: point --url (or $NCF_DOWNLOAD_URL) at a mirror holding
    NAME.zip (and NAME.zip.md5)."""
    from ncf.data.datasets import data_dir as resolve
    from ncf.data.download import DownloadError, archive_url, offline_hint
    from ncf.data.download import download as fetch

    try:
        folder = fetch(name, resolve(data_dir), url, force=force)
    except DownloadError as e:
        if "cannot connect" in str(e) or "no answer within" in str(e):
            raise DownloadError(f"{e}; {offline_hint(name)}") from None
        raise
    if json_out:
        print_json({"dataset": name, "folder": str(folder), "url": archive_url(name, url)})
        return
    typer.echo(f"{name}: ready in {folder}")


def info_dict(source: str, ds) -> dict:
    """What ``ncf data info --json`` prints for a loaded :class:`~ncf.data.split.Dataset`."""
    report = ds.report
    reads = report.get("read", {})
    reads = reads.values() if "path" not in reads else [reads]
    out = {
        "source": source,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "n_interactions": ds.n_interactions,
        "density": ds.n_interactions / max(1, ds.n_users * ds.n_items),
        "split": {
            "train": ds.train.nnz,
            "valid": len(ds.valid) if ds.valid else 0,
            "test": len(ds.test) if ds.test is not None else 0,  # a given split's test file is read here
            "test_candidates": _candidate_width(ds),
        },
        "skipped_rows": sum(r.get("skipped", 0) for r in reads),
        "skipped_lines": [n for r in reads for n in r.get("skipped_lines", [])][:10],
        "blank_lines": sum(r.get("blank_lines", 0) for r in reads),
        "below_min_rating": sum(r.get("below_min_rating", 0) for r in reads),
        "duplicates_collapsed": report.get("duplicates_collapsed", 0),
        "users_without_test": report.get("users_without_test", 0),
        "users_without_valid": report.get("users_without_valid", 0),
        "timestamps": report.get("timestamps"),
        "report": report,
    }
    if "split_sizes" in report:  # a pre-split source: the sizes of its own files
        out["split_sizes"] = report["split_sizes"]
    return out


def _candidate_width(ds) -> int:
    """Negatives a test row has room for (a given split's are drawn on first use: not drawn here)."""
    from ncf.data.split import PAD, DrawnHoldOut, LazyHoldOut

    test = ds.test.resolve() if isinstance(ds.test, LazyHoldOut) else ds.test
    if test is None:
        return 0
    if isinstance(test, DrawnHoldOut):
        return int((ds.config or {}).get("n_neg_eval", 99))
    # the negatives sampled: fewer than asked where a small catalogue has not as many unseen items
    return int((test.candidates != PAD).sum(axis=1).max(initial=1) - 1)


@data_app.command("info")
def info(
    source: str = typer.Argument(None, help="Dataset name (ml-100k, ncf-ml-1m, ...) or a ratings file "
                                 "(or --train FILE --test FILE)."),
    data_dir: str = DataDirOpt,
    train_file: Path = TrainFileOpt,
    test_file: Path = TestFileOpt,
    valid_file: Path = ValidFileOpt,
    layout: str = LayoutOpt,
    valid_ratio: float = ValidRatioOpt,
    json_out: bool = JsonOpt,
    user_col: str = typer.Option(None, "--user-col", help="User column: a name in the header or a 0-based position."),
    item_col: str = typer.Option(None, "--item-col", help="Item column: a name or a 0-based position."),
    rating_col: str = typer.Option(None, "--rating-col", help="Rating column (optional)."),
    time_col: str = typer.Option(None, "--time-col", help="Timestamp column (optional; unix time or ISO date)."),
    sep: str = typer.Option(None, "--sep", help="Field separator (default: sniffed; '\\t' or 'tab' for tabs)."),
    min_rating: float = typer.Option(None, "--min-rating", help="Keep only ratings >= this (default: all)."),
    header: bool = typer.Option(None, "--header/--no-header", help="The first row is a header / is data "
                                "(default: detected)."),
    on_bad_lines: str = typer.Option("error", "--on-bad-lines", help="error | skip (skipped rows are counted)"),
):
    """Users, items, interactions, density and split sizes of SOURCE."""
    from ncf.data.datasets import load_dataset

    ds = load_dataset(data_config(source, data_dir, train_file, test_file, valid_file, layout=layout,
                                  valid_ratio=valid_ratio, source_flag="SOURCE", user_col=user_col, item_col=item_col,
                                  rating_col=rating_col, time_col=time_col, sep=sep,
                                  min_rating=min_rating, header=header, on_bad_lines=on_bad_lines))
    source = source if source is not None else str(train_file)
    out = info_dict(source, ds)
    if json_out:
        print_json(out)
        return
    t = Table(title=f"ncf data info {source}")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k in ("n_users", "n_items", "n_interactions"):
        t.add_row(k, f"{out[k]:,}")
    t.add_row("density", f"{out['density']:.4%}")
    for k, v in out.get("split_sizes", {}).items():
        t.add_row(f"source {k.replace('_', ' ')}", f"{v:,}")
    for k, v in out["split"].items():
        t.add_row(f"split {k.replace('_', ' ')}", f"{v:,}")
    t.add_row("timestamps", "yes" if out["timestamps"] else "no (held-out items drawn at random, seeded)")
    for k in ("duplicates_collapsed", "below_min_rating", "blank_lines", "users_without_test", "users_without_valid"):
        if out[k]:
            t.add_row(k.replace("_", " "), f"{out[k]:,}")
    for part in ("valid", "test"):  # a given split: held-out pairs whose user or item the training file lacks
        seen = ds.report.get(part) if isinstance(ds.report.get(part), dict) else {}
        if seen.get("unseen_pairs"):
            t.add_row(f"{part} pairs left out (unseen user / item)",
                      f"{seen['unseen_pairs']:,} ({seen['unseen_user_pairs']:,} / {seen['unseen_item_pairs']:,})")
    if out["skipped_rows"]:
        lines = ", ".join(map(str, out["skipped_lines"])) + (", ..." if out["skipped_rows"] > 10 else "")
        t.add_row("malformed rows skipped", f"{out['skipped_rows']:,} (lines {lines})")
    cand = ds.report.get("candidates")
    if cand:
        t.add_row("positives removed from their negatives", f"{cand['rows_with_positive_in_negatives']:,}")
        t.add_row("duplicate / seen negatives removed", f"{cand['duplicate_negatives']:,} / {cand['seen_negatives']:,}")
    tables.print(t)
