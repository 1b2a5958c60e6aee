"""Readers for ratings files. Every reader returns a :class:`Ratings` frame and a report.

Errors name the file, the (1-based) line and the field. With ``on_bad_lines="skip"``
malformed rows are skipped and *counted* in :class:`ReadReport`; nothing is dropped
silently. Blank lines and empty trailing fields are tolerated everywhere.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

BAD_LINES = ("error", "skip")


class DataError(ValueError):
    """A problem with an input file; the message names the file and, where known, the line."""


@dataclass
class ReadReport:
    path: str
    rows: int = 0  # rows kept
    skipped: int = 0  # malformed rows skipped (on_bad_lines="skip")
    skipped_lines: list[int] = field(default_factory=list)  # first few skipped line numbers
    below_min_rating: int = 0  # rows dropped by min_rating (reported, not silent)
    blank_lines: int = 0

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "rows": self.rows,
            "skipped": self.skipped,
            "skipped_lines": self.skipped_lines[:10],
            "below_min_rating": self.below_min_rating,
            "blank_lines": self.blank_lines,
        }


@dataclass
class Ratings:
    """Raw interactions as read: raw user and item ids, optional rating and timestamp."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    report: ReadReport

    def __len__(self) -> int:
        return len(self.users)

    def filter_min_rating(self, min_rating: float | None) -> Ratings:
        if min_rating is None:
            return self
        if self.ratings is None:
            raise DataError(f"{self.report.path}: --min-rating needs a rating column")
        keep = self.ratings >= min_rating
        self.report.below_min_rating += int((~keep).sum())
        self.report.rows = int(keep.sum())
        return Ratings(
            self.users[keep],
            self.items[keep],
            self.ratings[keep],
            None if self.timestamps is None else self.timestamps[keep],
            self.report,
        )


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {encoding} text ({e.reason} at byte {e.start})") from None


def sniff_sep(first_line: str) -> str:
    for sep in ("::", "\t", ",", ";", "|"):
        if sep in first_line:
            return sep
    if " " in first_line.strip():
        return r"\s+"
    raise DataError("cannot detect the field separator; pass --sep")


def _split_fields(text: str, sep: str) -> pd.DataFrame:
    """Every line as string fields; line numbers are index + 1. Blank lines are all-NaN rows."""
    if sep == "::":  # the C parser takes one-character separators only
        text, sep = text.replace("::", "\x1f"), "\x1f"
    lines = text.splitlines()
    width = 0
    if lines:
        if sep == r"\s+":
            width = max((len(ln.split()) for ln in lines), default=0)
        else:
            width = max((ln.count(sep) + 1 for ln in lines), default=0)
    if width == 0:
        return pd.DataFrame()
    return pd.read_csv(
        io.StringIO(text),
        sep=sep,
        header=None,
        names=list(range(width)),
        dtype=str,
        skip_blank_lines=False,
        keep_default_na=False,
        na_values=[],
        quoting=csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE,
        engine="c" if sep != r"\s+" else "python",
    )


def read_table(
    path: str | Path,
    user_col: str | int = 0,
    item_col: str | int = 1,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str | None = None,
    header: bool | None = None,
    on_bad_lines: str = "error",
    encoding: str = "utf-8",
    min_rating: float | None = None,
) -> Ratings:
    """Read a delimited (or ``.parquet``) file whose columns are named or 0-based positions.

    ``header=None`` detects a header row: it is one when it contains a named column,
    or when its rating/time fields are not numbers while the next row's are.
    """
    path = Path(path)
    if on_bad_lines not in BAD_LINES:
        raise DataError(f"on_bad_lines must be one of {BAD_LINES}, not {on_bad_lines!r}")
    if path.suffix == ".parquet":
        return _read_parquet(path, user_col, item_col, rating_col, time_col, on_bad_lines, min_rating)
    text = _read_text(path, encoding)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise DataError(f"{path}: file is empty")
    sep = sep or sniff_sep(first)
    if sep == "\\t":
        sep = "\t"
    try:
        df = _split_fields(text, sep)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: {e}") from None
    cols = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}
    names = [c for c in cols.values() if isinstance(c, str) and not c.isdigit()]
    nonblank = (df.fillna("").astype(str).apply(lambda s: s.str.strip()) != "").any(axis=1)
    first_row_idx = int(np.flatnonzero(nonblank.to_numpy())[0])
    first_vals = [str(v).strip() for v in df.iloc[first_row_idx].tolist()]
    if header is None:
        header = bool(names) or _looks_like_header(df, first_row_idx, cols)
    positions: dict[str, int | None] = {}
    for key, col in cols.items():
        if col is None:
            positions[key] = None
        elif isinstance(col, int) or (isinstance(col, str) and col.isdigit()):
            positions[key] = int(col)
        else:
            if not header:
                raise DataError(f"{path}: column {col!r} named but the file has no header row")
            if col not in first_vals:
                raise DataError(
                    f"{path}: no column {col!r} in the header (columns: {', '.join(v for v in first_vals if v)})"
                )
            positions[key] = first_vals.index(col)
    if header:
        df = df.iloc[first_row_idx + 1 :]
    return _validate(df, path, positions, on_bad_lines, min_rating)


def _looks_like_header(df: pd.DataFrame, first: int, cols: dict) -> bool:
    numeric_cols = [c for c in (cols["rating"], cols["timestamp"]) if isinstance(c, int)]
    if not numeric_cols or len(df) < first + 2:
        # ids may be strings; a header is then only recognised by name
        return False
    row0, row1 = df.iloc[first], df.iloc[first + 1]
    def num(v):
        return pd.to_numeric(pd.Series([v]), errors="coerce").notna().iloc[0]
    return all(not num(row0[c]) for c in numeric_cols) and all(num(row1[c]) for c in numeric_cols)


def _validate(
    df: pd.DataFrame,
    path: Path,
    positions: dict[str, int | None],
    on_bad_lines: str,
    min_rating: float | None,
) -> Ratings:
    report = ReadReport(str(path))
    width = df.shape[1]
    line_no = df.index.to_numpy() + 1
    fields = df.fillna("").astype(str)
    blank = (fields.apply(lambda s: s.str.strip()) == "").all(axis=1).to_numpy()
    report.blank_lines = int(blank.sum())
    bad = np.zeros(len(df), dtype=bool)
    reasons: dict[int, str] = {}
    out: dict[str, np.ndarray | None] = {}
    for key, pos in positions.items():
        if pos is None:
            out[key] = None
            continue
        if pos >= width:
            raise DataError(f"{path}: column {pos} requested but rows have only {width} fields")
        col = fields[pos].str.strip().to_numpy()
        if key in ("user", "item"):
            empty = (col == "") & ~blank
            _mark(bad, reasons, empty, line_no, f"field {key!r} is empty")
            out[key] = col
        else:
            values = pd.to_numeric(pd.Series(col), errors="coerce").to_numpy()
            wrong = np.isnan(values) & ~blank
            if key == "timestamp":
                wrong |= ~np.isnan(values) & (values != np.round(values)) & ~blank
            for i in np.flatnonzero(wrong)[:1]:
                reasons.setdefault(int(line_no[i]), f"field {key!r}: {col[i]!r} is not a number")
            bad |= wrong
            out[key] = values
    # columns not named (titles, empty trailing fields) are ignored by design
    if bad.any():
        first_bad = int(line_no[np.flatnonzero(bad)[0]])
        if on_bad_lines == "error":
            raise DataError(
                f"{path}:{first_bad}: {reasons.get(first_bad, 'malformed row')} "
                f"({int(bad.sum())} malformed row(s); --on-bad-lines skip skips and counts them)"
            )
        report.skipped = int(bad.sum())
        report.skipped_lines = [int(x) for x in line_no[bad][:10]]
    keep = ~bad & ~blank
    report.rows = int(keep.sum())
    ratings = Ratings(
        users=out["user"][keep],
        items=out["item"][keep],
        ratings=None if out["rating"] is None else out["rating"][keep].astype(np.float32),
        timestamps=None if out["timestamp"] is None else out["timestamp"][keep].astype(np.int64),
        report=report,
    )
    return ratings.filter_min_rating(min_rating)


def _mark(bad, reasons, mask, line_no, reason):
    for i in np.flatnonzero(mask)[:1]:
        reasons.setdefault(int(line_no[i]), reason)
    bad |= mask


def _read_parquet(path, user_col, item_col, rating_col, time_col, on_bad_lines, min_rating) -> Ratings:
    try:
        frame = pd.read_parquet(path)
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'ncf[parquet]')") from e
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        raise DataError(f"{path}: cannot read Parquet ({e})") from None
    columns = list(frame.columns)
    positions = {}
    for key, col in {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}.items():
        if col is None:
            positions[key] = None
        elif isinstance(col, int) or str(col).isdigit():
            positions[key] = int(col)
        elif col in columns:
            positions[key] = columns.index(col)
        else:
            raise DataError(f"{path}: no column {col!r} (columns: {', '.join(map(str, columns))})")
    df = frame.astype(str).replace({"nan": "", "None": "", "<NA>": ""})
    df.columns = range(df.shape[1])
    df.index = range(len(df))  # row i is reported as "line" i + 1
    return _validate(df, path, positions, on_bad_lines, min_rating)


# --- Known formats -----------------------------------------------------------------------


def read_ml100k(path: str | Path, **kw) -> Ratings:
    """MovieLens 100K ``u.data``: user, item, rating, timestamp separated by tabs."""
    return read_table(path, 0, 1, 2, 3, sep="\t", header=False, **kw)


def read_ml1m(path: str | Path, **kw) -> Ratings:
    """MovieLens 1M / 10M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``."""
    return read_table(path, 0, 1, 2, 3, sep="::", header=False, **kw)


def read_ml_csv(path: str | Path, **kw) -> Ratings:
    """MovieLens 20M / 25M / latest ``ratings.csv`` with header ``userId,movieId,rating,timestamp``."""
    return read_table(path, "userId", "movieId", "rating", "timestamp", sep=",", header=True, **kw)


def read_ncf_rating(path: str | Path, **kw) -> Ratings:
    """NCF ``*.train.rating`` / ``*.test.rating``: user, item and optional rating and timestamp."""
    path = Path(path)
    text = _read_text(path, "utf-8")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    n = len(first.rstrip("\t").split("\t"))
    if n < 2:
        raise DataError(f"{path}:1: expected 2 to 4 tab-separated fields, found {n}")
    return read_table(
        path, 0, 1, 2 if n >= 3 else None, 3 if n >= 4 else None, sep="\t", header=False, **kw
    )


def read_ncf_negative(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """NCF ``*.test.negative``: ``(user,item)\\tneg1\\t...``. Returns users, items, negatives.

    Negatives are returned as read (duplicates and the positive included); the split
    module removes those.
    """
    path = Path(path)
    text = _read_text(path, "utf-8")
    users, items, negs = [], [], []
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        head, *rest = line.rstrip("\t\r\n ").split("\t")
        head = head.strip()
        if not (head.startswith("(") and head.endswith(")") and "," in head):
            raise DataError(f"{path}:{no}: first field should be '(user,item)', found {head!r}")
        try:
            u, i = (int(x) for x in head[1:-1].split(","))
        except ValueError:
            raise DataError(f"{path}:{no}: '(user,item)' must hold two integers, found {head!r}") from None
        try:
            row = [int(x) for x in rest if x.strip() != ""]
        except ValueError as e:
            raise DataError(f"{path}:{no}: negative item is not an integer ({e})") from None
        users.append(u)
        items.append(i)
        negs.append(row)
    if not users:
        raise DataError(f"{path}: no candidate rows")
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), negs
