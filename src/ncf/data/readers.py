"""Readers for ratings files. Every reader returns a :class:`Ratings` frame and a report.

Errors name the file, the (1-based) line and the field. With ``on_bad_lines="skip"``
malformed rows are skipped and *counted* in :class:`ReadReport`; nothing is dropped
silently. Blank lines and empty trailing fields are tolerated everywhere.

Two passes, one contract: a clean file is parsed once by pandas' C parser with typed
columns (ids as ``int64`` where they are integers, else strings); only when that fails
(a malformed row, a short row, a non-number) is the file re-read line by line as text to
say exactly what is wrong and where, or to skip and count the bad rows.

Ids: a column whose every value is an integer is read as ``int64`` (so ``"007"`` and
``"7"`` are the same id); any other id column keeps its (stripped) strings.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ncf.data.ids import canonical_ids, integer_literals
from ncf.errors import DataError  # noqa: F401 (re-exported)

BAD_LINES = ("error", "skip")
ROLES = ("user", "item", "rating", "timestamp")
_SAMPLE = 50  # non-blank lines looked at to detect a header row
_UNIT_SEP = "\x1f"  # stands in for multi-character separators (the C parser takes one character)
_INT64_MAX = 2**63 - 1
# magic bytes of compressed files: gzip is read directly, the others are named
_COMPRESSED = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd"}




@dataclass
class ReadReport:
    path: str
    rows: int = 0  # rows kept
    skipped: int = 0  # malformed rows skipped (on_bad_lines="skip")
    skipped_lines: list[int] = field(default_factory=list)  # first few skipped line numbers
    below_min_rating: int = 0  # rows dropped by min_rating (reported, not silent)
    blank_lines: int = 0
    header: bool = False  # a header row was found (and not counted as data)
    layout: str = "table"  # "adjacency": lines of `user item item ...` (read_adjacency)
    empty_lists: int = 0  # adjacency: user lines with no item (no pairs)
    warnings: list[str] = field(default_factory=list)  # things the caller should tell the user
    first_reason: str = field(default="", repr=False)  # why the first skipped row is malformed (not saved)
    columns: dict = field(default_factory=dict)  # role -> the column read for it ("'userId' (column 0)")

    def to_dict(self) -> dict:
        return {**({"warnings": list(self.warnings)} if self.warnings else {}),
            "path": self.path,
            "rows": self.rows,
            "skipped": self.skipped,
            "skipped_lines": self.skipped_lines[:10],
            "below_min_rating": self.below_min_rating,
            "blank_lines": self.blank_lines,
            "header": self.header,
            **({"layout": self.layout, "empty_lists": self.empty_lists} if self.layout != "table" else {}),
            **({"columns": dict(self.columns)} if self.columns else {}),
        }


@dataclass
class Ratings:
    """Raw interactions as read: raw user and item ids (``int64`` or ``str``), optional
    rating (``float32``) and timestamp (``int64``, seconds where the file gives dates)."""

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


# --- Text helpers -----------------------------------------------------------------------


def _read_text(path: Path, encoding: str) -> str:
    """The file's text; a gzip file is decompressed (other compressed files are named, not read)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a ratings file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: a gzip file that cannot be decompressed ({e})") from None
    else:
        for magic, kind in _COMPRESSED.items():
            if data.startswith(magic):
                raise DataError(f"{path}: a {kind}-compressed file; only gzip (.gz) is read directly: "
                                "decompress it first")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {encoding} text ({e.reason} at byte {e.start})") from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the first field
    if "\r" in text:  # Windows and old Mac line ends (as reading in text mode does)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def sniff_sep(first_line: str) -> str:
    for sep in ("::", "\t", ",", ";", "|"):
        if sep in first_line:
            return sep
    if " " in first_line.strip():
        return r"\s+"
    raise DataError("cannot detect the field separator; pass --sep")


_SEP_NAMES = {"\\t": "\t", "tab": "\t", "comma": ",", "space": r"\s+", "whitespace": r"\s+", " ": r"\s+"}


def _resolve_sep(sep: str | None, first: str, path: Path) -> str:
    if sep is None or sep == "":
        try:
            return sniff_sep(first)
        except DataError as e:
            raise DataError(f"{path}:1: {e}") from None
    return _SEP_NAMES.get(sep.lower() if sep.isalpha() else sep, sep)


def _one_char(text: str, sep: str) -> tuple[str, str]:
    """The C parser splits on one character: a literal multi-character separator (``::``)
    becomes the ASCII unit separator."""
    if len(sep) > 1 and sep != r"\s+":
        return text.replace(sep, _UNIT_SEP), _UNIT_SEP
    return text, sep


_QUOTED_SEPS = (",", ";", "\t")  # separators of spreadsheet exports, which quote a field holding one


def _quoting(sep: str) -> int:
    return csv.QUOTE_MINIMAL if sep in _QUOTED_SEPS else csv.QUOTE_NONE


def _max_fields(text: str, sep: str) -> int:
    """The most fields on any line, counted without splitting the text into Python lines."""
    if sep == r"\s+":
        return max((len(ln.split()) for ln in text.splitlines()), default=0)
    if len(sep.encode()) != 1:
        return max((ln.count(sep) + 1 for ln in text.splitlines()), default=0)
    b = np.frombuffer(text.encode(), dtype=np.uint8)
    ends = np.append(np.flatnonzero((b == 10) | (b == 13)), len(b))
    seps = np.flatnonzero(b == ord(sep))
    per_line = np.diff(np.searchsorted(seps, ends), prepend=0)
    return int(per_line.max()) + 1


def _count_blank(text: str) -> int:
    """Lines holding nothing but spaces (the last line's empty remainder not counted)."""
    n = len(re.findall(r"(?m)^[ \t\f\v\r]*$", text))
    return n - (1 if text.endswith("\n") or text == "" else 0)


def _split_fields(text: str, sep: str) -> pd.DataFrame:
    """Every physical line as a row of string fields (NaN past a short row's end); line
    number = index + 1. Blank lines stay as empty rows. ``sep`` must be one character or ``\\s+``."""
    width = _max_fields(text, sep) if text.strip() else 0
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
        quoting=_quoting(sep),
        engine="c" if sep != r"\s+" else "python",
    )


def _first_lines(text: str, n: int) -> tuple[list[tuple[int, str]], int]:
    """Up to ``n`` non-blank (line number, line) pairs, and the character offset just past
    the first of them."""
    out: list[tuple[int, str]] = []
    offset, first_end = 0, 0
    for no, line in enumerate(io.StringIO(text), start=1):
        offset += len(line)
        if line.strip():
            if not out:
                first_end = offset
            out.append((no, line.rstrip("\r\n")))
            if len(out) >= n:
                break
    return out, first_end


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity")


# --- Columns ------------------------------------------------------------------------------


def _is_position(col) -> bool:
    return isinstance(col, int) or (isinstance(col, str) and col.isdigit())


def _resolve_columns(path: Path, cols: dict, header_fields: list[str] | None) -> dict[str, int | None]:
    """Role -> 0-based position, from positions or header names (exact, else case-insensitive)."""
    positions: dict[str, int | None] = {}
    for key, col in cols.items():
        if col is None:
            positions[key] = None
        elif _is_position(col):
            positions[key] = int(col)
            if positions[key] < 0:
                raise DataError(f"{path}: column position must be >= 0, got {col}")
        else:
            if header_fields is None:
                raise DataError(f"{path}: column {col!r} named but the file has no header row")
            names = [h.strip().strip('"').strip() for h in header_fields]
            lower = [n.lower() for n in names]
            same = [i for i, n in enumerate(names) if n == col] or [i for i, n in enumerate(lower) if n == col.lower()]
            if len(same) > 1:
                raise DataError(f"{path}: {len(same)} columns are named {col!r} (positions "
                                f"{', '.join(map(str, same))}): rename one, or name the {key} column by its position")
            if not same:
                raise DataError(
                    f"{path}: no column {col!r} in the header (columns: {', '.join(n for n in names if n)})"
                )
            positions[key] = same[0]
    used = [(k, p) for k, p in positions.items() if p is not None]
    for i, (k1, p1) in enumerate(used):
        for k2, p2 in used[i + 1:]:
            if p1 == p2:
                raise DataError(f"{path}: the {k1} and {k2} columns are the same column ({p1})")
    return positions


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")
# words of column names: a first row made of them (and never seen again) is a header
_NAME_WORDS = frozenset("""
    id ids uid iid key user users userid username customer customers client clients member account visitor
    person buyer reader viewer player session item items itemid product products productid sku article movie
    movies movieid film book books track song artist video page object rating ratings rate score stars value
    weight count clicks time timestamp ts date datetime when event created updated purchased bought watched
    at name title label""".split())
_MISSING_IDS = frozenset({"nan", "na", "n/a", "null", "none", "nil", "<na>", "nat"})  # pandas' missing markers
# header names (lower case, letters and digits only) of each role, used when no column is asked for
_ROLE_NAMES = {
    "user": frozenset("""user users userid uid customer customerid client clientid visitor visitorid member memberid
        account accountid reviewer reviewerid person personid buyer buyerid""".split()),
    "item": frozenset("""item items itemid iid movie movieid film filmid product productid sku article articleid book
        bookid isbn track trackid song songid video videoid artist artistid business businessid asin venue venueid
        location locationid poi poiid page pageid""".split()),
    "rating": frozenset("rating ratings score stars star rate bookrating".split()),
    "timestamp": frozenset("""timestamp timestamps time ts date datetime unixtime unixreviewtime eventtime
        createdat""".split()),
}
_MISSING = frozenset({"na", "n/a", "nan", "null", "none", "nil", "missing", "unknown", "inf", "infinity"})
_TIME_NAME = re.compile(r"(?i)^(time|timestamp|ts|date|datetime|when|.*[_ .-](at|time|date|ts)|.*(Time|Date|At))$")


def _is_date(s: str) -> bool:
    return bool(_DATE.match(s.strip()))


def _name_like(s: str) -> bool:
    """Looks like a column name: letters (digits after the first), made of words such as
    ``customer_id``, ``productId``, ``rating``, ``purchased_at``."""
    s = s.strip().strip('"').strip()
    if not re.match(r"^[A-Za-z][A-Za-z0-9 _.-]*$", s):
        return False
    words = re.split(r"[ _.-]+|(?<=[a-z])(?=[A-Z])", s)
    return any(w.lower() in _NAME_WORDS for w in words if w)


def _looks_like_header(rows: list[list[str]], positions: dict[str, int | None]) -> bool:
    """A first row is a header when every requested field of it is a non-empty non-number and
    either some column (requested or not) holds a name above only numbers (or only dates), or
    every requested field is a column name (``customer_id``, ``product``) that the column does
    not hold again (string ids have no column of numbers to tell a header by)."""
    if len(rows) < 2:
        return False
    wanted = [p for p in positions.values() if p is not None]
    first = rows[0]
    if any(p >= len(first) or not first[p].strip() or _is_number(first[p]) for p in wanted):
        return False
    rest = rows[1:]
    for c, name in enumerate(first):
        name = name.strip().strip('"').strip()
        if not re.match(r"^[A-Za-z_]", name) or name.lower() in _MISSING or _is_date(name):
            continue  # a column name starts with a letter; "NA" above numbers is a missing value
        values = [r[c] for r in rest if c < len(r) and r[c].strip()]
        if values and (all(_is_number(v) for v in values) or all(_is_date(v) for v in values)):
            return True
    return all(_name_like(first[p]) and all(p >= len(r) or r[p].strip() != first[p].strip() for r in rest)
               for p in wanted)


def _unused_time_columns(path: Path, rows: list[list[str]], positions: dict[str, int | None],
                         header: bool) -> list[str]:
    """Warnings for time-like columns (by name in a header, else ISO dates) the split does not use."""
    if positions.get("timestamp") is not None or not rows:
        return []
    used = {p for p in positions.values() if p is not None}
    body = rows[1:] if header else rows
    out = []
    for c in range(len(rows[0])):
        if c in used:
            continue
        name = rows[0][c].strip().strip('"').strip() if header else ""
        values = [r[c] for r in body if c < len(r) and r[c].strip()]
        dates = bool(values) and all(_is_date(v) for v in values)
        if (name and _TIME_NAME.match(name)) or dates:
            what = f"column {name!r}" if name else f"column {c}"
            out.append(f"{path}: {what} looks like a time but is not used: the split holds out a random item "
                       f"per user; pass --time-col {name or c} (time_col= from Python) to hold out each user's latest")
    return out


def _named_roles(header_fields: list[str]) -> dict[str, int | None] | None:
    """Role -> position from a header's names (``user_id``, ``movieId``, ``rating``, ``timestamp``...),
    where it names one user and one item column; else None."""
    keys = [re.sub(r"[^a-z0-9]", "", h.strip().strip('"').lower()) for h in header_fields]
    out: dict[str, int | None] = {}
    for role, names in _ROLE_NAMES.items():
        found = [i for i, k in enumerate(keys) if k in names]
        out[role] = found[0] if len(found) == 1 else None
    return out if out["user"] is not None and out["item"] is not None else None


def _fill_columns(cols: dict, header_fields: list[str] | None) -> dict:
    """The columns asked for with the defaults filled in: none asked for at all, a header that
    names a user and an item column (and maybe a rating and a time) is read by those names;
    else the user is column 0 and the item column 1."""
    if header_fields is not None and all(c is None for c in cols.values()):
        named = _named_roles(header_fields)
        if named is not None:
            return named
    return {**cols, "user": 0 if cols["user"] is None else cols["user"],
            "item": 1 if cols["item"] is None else cols["item"]}


def _column_labels(positions: dict[str, int | None], header_fields: list[str] | None) -> dict[str, str]:
    """Role -> what was read for it, for reports and messages: ``'userId' (column 0)`` or ``column 0``."""
    out = {}
    for key, p in positions.items():
        if p is None:
            continue
        name = header_fields[p].strip().strip('"').strip() if header_fields and p < len(header_fields) else ""
        out[key] = f"{name!r} (column {p})" if name else f"column {p}"
    return out


def _rating_like_times(path: Path, times: np.ndarray | None, label: str, users: np.ndarray) -> list[str]:
    """A warning where a time column not named as one holds only a few small integers (ratings 1 to 5,
    say) that repeat within users (an order 0, 1, 2 ... of each user's interactions does not);
    ``label``: the column as :func:`_column_labels` names it; ``users``: the rows' users."""
    if times is None or not len(times):
        return []
    name = label.rsplit(" (column ", 1)[0].strip("'\"") if " (column " in label else ""
    if name and (_TIME_NAME.match(name) or re.sub(r"[^a-z0-9]", "", name.lower()) in _ROLE_NAMES["timestamp"]):
        return []  # a column named as a time: small values are an order (0, 1, 2 ...), as its name says
    values = np.unique(times)
    if len(values) > 10 or values[0] < 0 or values[-1] > 10:
        return []
    if pd.DataFrame({"u": users, "t": times}).duplicated().mean() < 0.1:
        return []  # nearly every user's times differ: an order, not ratings
    return [f"{path}: the time column ({label}) holds only the values {', '.join(map(str, values.tolist()))}, "
            "which look like ratings, not times: they are read as seconds after 1970-01-01 and decide which "
            "interaction of a user is the latest; if they are ratings, pass that column as --rating-col "
            "(rating_col= from Python) and the real time column, if any, as --time-col"]


def _n_fields(fields: list[str]) -> int:
    """Fields up to the last non-empty one (empty trailing fields are tolerated)."""
    n = len(fields)
    while n and not fields[n - 1].strip():
        n -= 1
    return n


def _split_line(line: str, sep: str) -> list[str]:
    if sep == r"\s+":
        return line.split()
    if sep in _QUOTED_SEPS:
        return next(csv.reader([line], delimiter=sep), [])
    return line.split(sep)


# --- The generic reader -------------------------------------------------------------------


def read_table(
    path: str | Path,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str | None = None,
    header: bool | None = None,
    on_bad_lines: str = "error",
    encoding: str = "utf-8",
    min_rating: float | None = None,
) -> Ratings:
    """Read a delimited (or ``.parquet``) file whose columns are named or 0-based positions.

    ``sep=None`` sniffs the separator from the first non-blank line (``::``, tab, ``,``,
    ``;``, ``|``, else whitespace). ``header=None`` detects a header row: it is one when a
    column is asked for by name, or when its requested fields are all non-numbers while
    a requested column of the next rows holds only numbers. Fields other than the
    requested ones (titles, empty trailing fields) are ignored.

    Columns: ``user_col``/``item_col`` None is column 0/1; with no column asked for at all,
    a header naming a user and an item column (``user_id``, ``userId``, ``movieId``,
    ``product_id``...) is read by its names, its ``rating`` and ``timestamp`` columns too.
    A file of JSON objects (JSON lines, or a ``.json`` array of objects) is read with pandas,
    its keys being the header.
    """
    path = Path(path)
    cols = _check_table_args(path, user_col, item_col, rating_col, time_col, on_bad_lines)
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path, cols, on_bad_lines, min_rating)
    text = _read_text(path, encoding)
    if _is_json(path, text):
        return _read_json(path, text, cols, on_bad_lines, min_rating)
    layout, skip = _table_layout(path, cols, sep, header, text)
    return _parse_chunk(text, layout, skip, on_bad_lines, min_rating)


# --- The adjacency layout -------------------------------------------------------------------
# graph-CF benchmarks (LightGCN's Gowalla, Yelp2018, Amazon-Book) ship one line per user:
# ``user item item ...``, whitespace separated, integer ids; a user line alone means no pairs

LAYOUTS = ("adjacency", "table")  # DataConfig.layout (None: detected)
_WS = np.array([9, 10, 11, 12, 32], dtype=np.uint8)  # tab, newline, vertical tab, form feed, space


def read_file(path: str | Path, layout: str | None = None, on_bad_lines: str = "error",
              min_rating: float | None = None, detect: bool = True, **spec) -> Ratings:
    """A ratings file in either layout: ``layout="adjacency"`` (:func:`read_adjacency`),
    ``"table"`` (:func:`read_table` with ``spec``), or None: adjacency where ``detect`` (no
    column options were given) and :func:`looks_adjacency` says so, else a table."""
    path = Path(path)
    if layout not in (None, *LAYOUTS):
        raise DataError(f"layout must be {' or '.join(LAYOUTS)} (or left out: detected), not {layout!r}")
    if layout == "table" or path.suffix.lower() in (".parquet", ".pq") or (layout is None and not detect):
        if layout == "adjacency":
            raise DataError(f"{path}: a Parquet file has columns, not adjacency lists")
        return read_table(path, **spec, on_bad_lines=on_bad_lines, min_rating=min_rating)
    text = _read_text(path, "utf-8")
    if layout != "adjacency" and _is_json(path, text):  # JSON objects: by their keys, as read_table reads them
        return read_table(path, **spec, on_bad_lines=on_bad_lines, min_rating=min_rating)
    if layout == "adjacency" or looks_adjacency(text):
        if min_rating is not None:
            raise DataError(f"{path}: --min-rating: the adjacency layout (user item item ...) has no ratings")
        return parse_adjacency(text, path, on_bad_lines, detected=layout is None)
    cols = _check_table_args(path, spec.get("user_col", 0), spec.get("item_col", 1), spec.get("rating_col"),
                             spec.get("time_col"), on_bad_lines)
    table, skip = _table_layout(path, cols, spec.get("sep"), spec.get("header"), text)
    ratings = _parse_chunk(text, table, skip, on_bad_lines, min_rating)
    if layout is None and table.width >= 5 and _integer_lines(text):  # wide rows of ids, two of them read
        ratings.report.warnings.append(
            f"{path}: its rows hold {table.width} integer fields and the first two are read as (user, item); "
            "if its lines are adjacency lists (user item item ..., every user with as many items), pass "
            "--layout adjacency (--layout table quiets this)")
    return ratings


def read_adjacency(path: str | Path, on_bad_lines: str = "error") -> Ratings:
    """Adjacency lists: each non-blank line ``user item item ...`` (whitespace separated,
    integer ids) gives the pairs (user, item) for each item; a line with a user alone gives
    none (counted in ``report.empty_lists``). A line with a non-integer field is named
    (``path:line``), or skipped and counted with ``on_bad_lines="skip"``."""
    path = Path(path)
    if on_bad_lines not in BAD_LINES:
        raise DataError(f"on_bad_lines must be one of {BAD_LINES}, not {on_bad_lines!r}")
    return parse_adjacency(_read_text(path, "utf-8"), path, on_bad_lines)


def looks_adjacency(text: str) -> bool:
    """True for the adjacency layout: the first non-blank lines hold whitespace-separated
    integers only, and the lines of the file do not all hold the same number of fields (a
    table's rows do; adjacency lists vary with each user's items)."""
    if not _integer_lines(text):
        return False
    data = text.encode()
    seen: set[int] = set()
    start = 0
    while start < len(data):  # in pieces of whole lines (bounded temporaries), until two counts differ
        end = data.find(b"\n", start + (8 << 20))
        end = len(data) if end < 0 else end + 1
        counts = _line_counts(np.frombuffer(data[start:end], dtype=np.uint8))[2]
        seen.update(np.unique(counts[counts > 0]).tolist())
        if len(seen) > 1:
            return True
        start = end
    return False


def _integer_lines(text: str) -> bool:
    """The first non-blank lines hold whitespace-separated integers only."""
    sample, _ = _first_lines(text, _SAMPLE)
    return bool(sample) and all(re.fullmatch(r"[ \t]*\d+([ \t]+\d+)*[ \t]*", ln) for _, ln in sample)


def _line_counts(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of the bytes ``b`` of a text: (start of each field, its 0-based line, fields on each line)."""
    ws = np.isin(b, _WS)
    prev_ws = np.concatenate([[True], ws[:-1]])
    starts = np.flatnonzero(~ws & prev_ws)
    newlines = np.flatnonzero(b == 10)
    n_lines = len(newlines) + (1 if len(b) and b[-1] != 10 else 0)
    line = np.searchsorted(newlines, starts)
    return starts, line, np.bincount(line, minlength=n_lines)


def parse_adjacency(text: str, path: Path, on_bad_lines: str = "error", detected: bool = False) -> Ratings:
    """The pairs of adjacency-list ``text`` (see :func:`read_adjacency`); vectorised over the
    bytes (no loop over lines or fields): Gowalla's 810k pairs in well under a second."""
    b = np.frombuffer(text.encode(), dtype=np.uint8)
    report = ReadReport(str(path), layout="adjacency")
    bad_byte = ~np.isin(b, _WS) & ((b < 48) | (b > 57))
    if bad_byte.any():
        line_of_byte = np.cumsum(b == 10) - (b == 10)  # 0-based line of each byte
        bad_lines = np.unique(line_of_byte[bad_byte])
        if on_bad_lines == "error":
            no = int(bad_lines[0])
            fields = text.split("\n", no + 1)[no].split()
            k, tok = next((k, f) for k, f in enumerate(fields, 1) if not f.isdigit())
            what = "the user" if k == 1 else f"field {k} (an item)"
            raise DataError(f"{path}:{no + 1}: {what} {tok!r} is not an integer id (adjacency layout: "
                            f"user item item ..., whitespace separated; {len(bad_lines)} malformed line(s); "
                            "--on-bad-lines skip skips and counts them)")
        b = np.where(np.isin(line_of_byte, bad_lines) & (b != 10), np.uint8(32), b)  # blanked, counted
        report.skipped = len(bad_lines)
        report.skipped_lines = [int(x) + 1 for x in bad_lines[:10]]
        text = b.tobytes().decode()
    starts, _, counts = _line_counts(b)
    gaps = np.append(np.flatnonzero(np.isin(b, _WS)), len(b))
    ends = gaps[np.searchsorted(gaps, starts)]  # one past each field's last byte
    for s, e in zip(starts[ends - starts > 18], ends[ends - starts > 18], strict=True):
        if int(b[s:e].tobytes()) > _INT64_MAX:
            raise DataError(f"{path}:{int(np.searchsorted(np.flatnonzero(b == 10), s)) + 1}: id "
                            f"{b[s:e].tobytes().decode()} is beyond the 64-bit integer range")
    values = np.fromstring(text, dtype=np.int64, sep=" ") if len(starts) else np.zeros(0, np.int64)
    if len(values) != len(starts):  # cannot happen after the byte check; never read short silently
        raise DataError(f"{path}: read {len(values)} of {len(starts)} fields")
    has = counts > 0
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]  # each user line's first field
    is_item = np.ones(len(values), dtype=bool)
    is_item[first] = False
    report.blank_lines = int((~has).sum()) - report.skipped
    report.empty_lists = int((counts == 1).sum())
    users = np.repeat(values[first], counts[has] - 1)
    report.rows = len(users)
    if detected:
        report.warnings.append(f"{path}: read as adjacency lists (user item item ..., its lines hold "
                               f"{int(counts[has].min())} to {int(counts[has].max())} integer fields); "
                               "--layout adjacency says so (and quiets this), --layout table reads it as columns")
    if report.rows == 0:
        raise DataError(f"{path}: no (user, item) pair: every line holds a user alone" if has.any()
                        else f"{path}: file is empty")
    return Ratings(users, values[is_item], None, None, report)


def _is_json(path: Path, text: str) -> bool:
    start = text.lstrip()[:1]
    return start == "{" or (start == "[" and path.suffix.lower() == ".json")


def _read_json(path: Path, text: str, cols: dict, on_bad_lines: str, min_rating: float | None) -> Ratings:
    """JSON lines (one object a line) or a JSON array of objects, through :func:`read_frame`."""
    lines = text.lstrip().startswith("{")
    try:
        frame = pd.read_json(io.StringIO(text), lines=lines, orient=None if lines else "records", dtype=False)
    except ValueError as e:
        raise DataError(f"{path}: {_json_problem(text, lines) or f'cannot be read as JSON ({e})'}") from None
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise DataError(f"{path}: holds no JSON objects (one object a line, such as {{\"user\": 1, \"item\": 2}})")
    return read_frame(frame, cols, path, on_bad_lines, min_rating)


def _json_problem(text: str, lines: bool) -> str | None:
    """Where a JSON-lines text is malformed: ``LINE: why`` (None where a line-by-line look finds nothing)."""
    import json

    if not lines:
        return None
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return (f"line {no}: not valid JSON ({e.msg} at character {e.colno}); a JSON-lines file holds one "
                    "object a line")
        if not isinstance(obj, dict):
            return f"line {no}: a JSON-lines file holds one object a line, found {type(obj).__name__}"
    return None


def _check_table_args(path: Path, user_col, item_col, rating_col, time_col, on_bad_lines: str) -> dict:
    if on_bad_lines not in BAD_LINES:
        raise DataError(f"on_bad_lines must be one of {BAD_LINES}, not {on_bad_lines!r}")
    return {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}


@dataclass
class TableLayout:
    """What :func:`read_table` decides from a file's first lines: the separator, whether the
    first non-blank line is a header (and its line number), the columns' positions, the
    fields of a row, and warnings for the caller."""

    path: Path
    sep: str
    header: bool
    header_line: int  # 1-based line of the header row (0: no header)
    positions: dict[str, int | None]
    width: int
    warnings: list[str]
    columns: dict = field(default_factory=dict)  # role -> label (see _column_labels)


def _table_layout(path: Path, cols: dict, sep: str | None, header: bool | None,
                  text: str) -> tuple[TableLayout, int]:
    """The layout, from the first non-blank lines of ``text`` (the file's beginning), and the
    character offset where the data rows start (past the header, if any)."""
    sample, first_end = _first_lines(text, _SAMPLE)
    if not sample:
        raise DataError(f"{path}: file is empty")
    sep = _resolve_sep(sep, sample[0][1], path)
    rows = [_split_line(ln, sep) for _, ln in sample]
    given = _fill_columns(cols, None)
    named = any(c is not None and not _is_position(c) for c in given.values())
    if header is None:
        wanted = _resolve_columns(path, given, None) if not named else {}
        header = named or _looks_like_header(rows, wanted) or (len(rows) == 1 and all(
            p < len(rows[0]) and _name_like(rows[0][p]) for p in wanted.values() if p is not None))
    if header and len(sample) == 1:
        raise DataError(f"{path}: holds only a header row ({sample[0][1].strip()!r}) and no interactions")
    head = rows[0] if header else None
    positions = _resolve_columns(path, _fill_columns(cols, head), head)
    warnings = _unused_time_columns(path, rows, positions, header)
    # the fields of a row: the header's (unnamed trailing columns of spreadsheet exports too), else the first row's
    width = len(rows[0]) if header else _n_fields(rows[0])
    layout = TableLayout(path, sep, bool(header), sample[0][0] if header else 0, positions, width, warnings,
                         _column_labels(positions, head))
    return layout, first_end if header else 0


def _parse_chunk(text: str, layout: TableLayout, skip: int, on_bad_lines: str, min_rating: float | None,
                 line0: int = 0, str_ids: frozenset = frozenset(), final: bool = True) -> Ratings:
    """The rows of ``text`` (whole lines of the file, the first being line ``line0 + 1``; its
    first ``skip`` characters are the header): the typed parse where the text is clean, else
    the exact pass that names the bad line (or skips and counts it). ``str_ids``: id columns
    to keep as strings (a column that is not integer elsewhere in the file). ``final``: this
    is the whole file (a file whose every row is malformed is refused here; else the caller's)."""
    path, sep, width = layout.path, layout.sep, layout.width
    body = text[skip:]
    if sep in ("\t", ";") and '"' in body:
        _check_quotes_close(body, sep, path, line0 + text[:skip].count("\n"))
    body1, sep1 = _one_char(body, sep)
    fast = _fast_read(body1, sep1, layout.positions, str_ids) if _max_fields(body1, sep1) <= width else None
    if fast is not None:
        report = ReadReport(str(path), rows=len(fast["user"]), blank_lines=_count_blank(body), header=layout.header,
                            warnings=_chunk_warnings(layout, fast["timestamp"], line0, fast["user"]),
                            columns=dict(layout.columns))
        ratings = Ratings(fast["user"], fast["item"], fast["rating"], fast["timestamp"], report)
        return ratings.filter_min_rating(min_rating)
    text1, sep1 = _one_char(text, sep)
    try:
        df = _split_fields(text1, sep1)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: {e}") from None
    if skip:
        df = df.iloc[layout.header_line:]  # rows after the header line
    df.index = df.index + line0
    ratings = _validate(df, path, layout.positions, on_bad_lines, min_rating, layout.header, width, str_ids, final)
    ratings.report.warnings = _chunk_warnings(layout, ratings.timestamps, line0, ratings.users)
    ratings.report.columns = dict(layout.columns)
    return ratings


def _check_quotes_close(body: str, sep: str, path: Path, line0: int) -> None:
    """A field that opens a quote and does not close it on its line would swallow the next lines
    into one row (tab- and semicolon-separated files rarely mean that): refused, naming the line."""
    for no, line in enumerate(body.split("\n"), start=line0 + 1):
        if '"' in line and len(list(csv.reader([line + "\n", "end\n"], delimiter=sep))) < 2:
            raise DataError(f'{path}:{no}: a field opens a quote (") that does not close on its line; quoted '
                            f"fields are read for , ; and tab separators: close the quote, or remove it")


def _chunk_warnings(layout: TableLayout, times: np.ndarray | None, line0: int, users: np.ndarray) -> list[str]:
    """The layout's warnings and the time column's, on the first chunk of a file only."""
    if line0:
        return []
    return [*layout.warnings, *_rating_like_times(layout.path, times, layout.columns.get("timestamp", ""), users)]


# --- Reading in chunks (a file larger than memory, see ncf.data.rankload) ---------------------

CHUNK_BYTES = 4 << 20  # text a chunk: bounds what one chunk costs to parse (about 15 times this)


def _open_bytes(path: Path):
    """The file opened for bytes (gzip decompressed); other compressed files are named."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a ratings file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    if head[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise DataError(f"{path}: a {kind}-compressed file; only gzip (.gz) is read directly: decompress it first")
    return open(path, "rb")  # noqa: SIM115 - the caller's with-block closes it


def text_chunks(path: str | Path, encoding: str = "utf-8", chunk_bytes: int = CHUNK_BYTES):
    """``(text, line0)`` pieces of the file, each of whole lines and about ``chunk_bytes`` long,
    decoded as :func:`_read_text` decodes the whole file (byte-order mark dropped, line ends
    made ``\\n``); ``line0``: lines before the piece. The first piece holds at least the lines
    that :func:`read_table` looks at to detect the layout."""
    path = Path(path)
    with _open_bytes(path) as f:
        rest, line0, offset, first = b"", 0, 0, True
        while True:
            try:
                block = f.read(chunk_bytes)
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}: a gzip file that cannot be decompressed ({e})") from None
            data = rest + block
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0 or (first and sum(1 for ln in data[:cut].split(b"\n") if ln.strip()) < _SAMPLE):
                    rest = data  # not a whole line yet (or too few for the layout): read on
                    continue
                piece, rest = data[:cut], data[cut:]
            else:
                piece, rest = data, b""
                if not piece and not first:
                    return
            try:
                text = piece.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid {encoding} text ({e.reason} at byte {offset + e.start})") from None
            if first:
                text = text.removeprefix("\ufeff")
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            yield text, line0
            line0 += text.count("\n")
            offset += len(piece)
            first = False
            if not block:
                return


def iter_table(
    path: str | Path,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str | None = None,
    header: bool | None = None,
    on_bad_lines: str = "error",
    encoding: str = "utf-8",
    min_rating: float | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    str_ids: frozenset = frozenset(),
):
    """:func:`read_table` in chunks: one :class:`Ratings` per piece of about ``chunk_bytes``
    (Parquet: per record batch), by the same layout detection, parse and validation, so
    errors name the file and the line as :func:`read_table` does. Ids are canonical per
    chunk (an integer column is int64); ``str_ids`` names id columns to keep as strings (the
    caller's second try when a column is not integer in every chunk). :func:`merge_reports`
    adds the chunks' reports up to :func:`read_table`'s."""
    path = Path(path)
    cols = _check_table_args(path, user_col, item_col, rating_col, time_col, on_bad_lines)
    if path.suffix.lower() in (".parquet", ".pq"):
        yield from _iter_parquet(path, cols, on_bad_lines, min_rating, chunk_bytes, str_ids)
        return
    layout = None
    for text, line0 in text_chunks(path, encoding, chunk_bytes):
        skip = 0
        if layout is None and _is_json(path, text):  # JSON objects: read whole, by pandas
            yield read_table(path, user_col, item_col, rating_col, time_col, on_bad_lines=on_bad_lines,
                             encoding=encoding, min_rating=min_rating)
            return
        if layout is None:
            layout, skip = _table_layout(path, cols, sep, header, text)
        yield _parse_chunk(text, layout, skip, on_bad_lines, min_rating, line0, str_ids, final=False)


def merge_reports(reports: list[ReadReport]) -> ReadReport:
    """The chunks' reports as one (what :func:`read_table` reports for the whole file); a file
    whose every row is malformed is refused as :func:`read_table` refuses it."""
    first = reports[0]
    out = ReadReport(first.path, header=first.header, warnings=list(first.warnings), columns=dict(first.columns))
    for r in reports:
        out.rows += r.rows
        out.skipped += r.skipped
        out.skipped_lines = (out.skipped_lines + r.skipped_lines)[:10]
        out.below_min_rating += r.below_min_rating
        out.blank_lines += r.blank_lines
        out.first_reason = out.first_reason or r.first_reason
    if out.rows + out.below_min_rating == 0 and out.skipped:
        raise DataError(f"{out.path}: every row is malformed ({out.skipped} skipped, first on line "
                        f"{out.skipped_lines[0]}: {out.first_reason or 'malformed row'})")
    return out


def _iter_parquet(path: Path, cols: dict, on_bad_lines: str, min_rating: float | None, chunk_bytes: int,
                  str_ids: frozenset):
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'ncf[parquet]')") from e
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        raise DataError(f"{path}: cannot read Parquet ({e})") from None
    line0 = 0
    rows = max(1024, chunk_bytes // 32)  # about 32 bytes a row as text
    try:
        for batch in pf.iter_batches(batch_size=rows):
            frame = batch.to_pandas()
            yield read_frame(frame, cols, path, on_bad_lines, min_rating, line0=line0, str_ids=str_ids, final=False)
            line0 += len(frame)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read Parquet ({e})") from None


def _fast_read(body: str, sep: str, positions: dict[str, int | None], str_ids: frozenset = frozenset()) -> dict | None:
    """Typed parse of a clean file, or None when anything is off (the caller then finds it).
    ``str_ids``: id columns kept as strings whatever they hold."""
    used = {k: p for k, p in positions.items() if p is not None}
    if not body.strip():
        return None
    for id_dtype in ("int64", "str"):
        dtype = {p: ("str" if k in str_ids else id_dtype) if k in ("user", "item")
                 else ("float64" if k == "rating" else "int64") for k, p in used.items()}
        try:
            df = pd.read_csv(
                io.StringIO(body), sep=sep, header=None, usecols=sorted(used.values()), dtype=dtype,
                skip_blank_lines=True, keep_default_na=False, na_values=[""], quoting=_quoting(sep),
                engine="c",
            )
        except (ValueError, OverflowError, pd.errors.ParserError, IndexError):
            continue
        out: dict[str, np.ndarray | None] = dict.fromkeys(ROLES)
        for key, p in used.items():
            col = df[p]
            if key in ("user", "item"):
                if id_dtype == "str" or key in str_ids:
                    col = col.str.strip()
                    if col.isna().any() or (col == "").any() or col.str.lower().isin(_MISSING_IDS).any():
                        return None
                    if key in str_ids or not integer_literals(col):  # the one id rule (ncf.data.ids)
                        out[key] = col.to_numpy(dtype=object).astype(str)
                        continue
                    try:  # this column may be all integers though the other is not
                        out[key] = col.astype("int64").to_numpy()
                    except (OverflowError, ValueError):  # an integer beyond int64: the exact pass says
                        return None
                else:
                    out[key] = col.to_numpy(dtype=np.int64)
            elif key == "rating":
                values = col.to_numpy(dtype=np.float64)
                if not np.isfinite(values).all():
                    return None
                out[key] = values.astype(np.float32)
            else:
                out[key] = col.to_numpy(dtype=np.int64)
        return out
    return None


def _ids(col: pd.Series, as_str: bool = False) -> np.ndarray:
    """Stripped id strings -> int64 where every one is an integer, else str (the one id rule,
    ``ncf.data.ids``, shared with the CLI and the HTTP service); ``as_str``: str regardless."""
    if as_str:
        return col.astype(str).str.strip().to_numpy(dtype=object).astype(str)
    return canonical_ids(col)


def _beyond_int64(col: pd.Series, ignore: np.ndarray) -> np.ndarray:
    """Integer ids outside int64, where every other id of the column (rows not ``ignore``d)
    is an integer: such a column is read as int64, so these cannot be kept (as strings they would
    turn every id of the column into a string)."""
    values = col.to_numpy(dtype=object)
    digits = col.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
    if not digits[~ignore].all():
        return np.zeros(len(col), dtype=bool)
    long = digits & (col.str.len().to_numpy() > 18)
    over = np.zeros(len(col), dtype=bool)
    for i in np.flatnonzero(long & ~ignore):
        over[i] = not -_INT64_MAX - 1 <= int(values[i]) <= _INT64_MAX
    return over


def _numbers(key: str, col: pd.Series) -> tuple[np.ndarray, np.ndarray, str]:
    """(values, malformed mask, what a malformed value should have been) for a rating or
    timestamp column of stripped strings; empty strings are malformed."""
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if key == "rating":
        return values, ~np.isfinite(values), "a number"
    wrong = ~np.isfinite(values) | (values != np.round(values))
    nonempty = (col != "").to_numpy()
    if wrong[nonempty].all() and nonempty.any():
        # no number at all: maybe ISO dates ("2001-01-01T10:00:00"); seconds since 1970, UTC
        dates = pd.to_datetime(col, errors="coerce", format="ISO8601", utc=True)
        ok = dates.notna().to_numpy()
        if ok.any():
            secs = (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
            return secs.to_numpy(dtype=np.float64, na_value=np.nan), ~ok, "a unix time or an ISO date"
    return values, wrong, "an integer (unix time)"


def _validate(
    df: pd.DataFrame,
    path: Path,
    positions: dict[str, int | None],
    on_bad_lines: str,
    min_rating: float | None,
    header: bool = False,
    expect_fields: int | None = None,
    str_ids: frozenset = frozenset(),
    final: bool = True,
) -> Ratings:
    """The slow, exact pass: every row checked, bad rows named (or skipped and counted).

    ``expect_fields``: a row with a non-empty field past this many is malformed. ``str_ids``:
    id columns kept as strings; ``final``: ``df`` is the whole file (see :func:`_parse_chunk`)."""
    report = ReadReport(str(path), header=header)
    width = df.shape[1]
    line_no = df.index.to_numpy() + 1
    used = {k: p for k, p in positions.items() if p is not None}
    for key, pos in used.items():
        if pos >= width:
            raise DataError(
                f"{path}: {key} column {pos} requested but rows have at most {width} field(s)"
                + (" (wrong --sep?)" if width == 1 else "")
            )
    stripped = {k: df[p].fillna("").astype(str).str.strip() for k, p in used.items()}
    blank = np.logical_and.reduce([(s == "").to_numpy() for s in stripped.values()])
    others = [c for c in range(width) if c not in used.values()]
    if blank.any() and others:  # rows empty in the used columns: blank only if empty everywhere
        rest = df.iloc[np.flatnonzero(blank), others].fillna("").astype(str)
        blank[np.flatnonzero(blank)] = (rest.apply(lambda s: s.str.strip()) == "").all(axis=1).to_numpy()
    report.blank_lines = int(blank.sum())
    bad = np.zeros(len(df), dtype=bool)
    reasons: dict[int, str] = {}
    out: dict[str, np.ndarray | None] = dict.fromkeys(ROLES)
    if expect_fields is not None and width > expect_fields:
        extra = df.iloc[:, expect_fields:].fillna("").astype(str).apply(lambda s: s.str.strip() != "")
        wrong = extra.any(axis=1).to_numpy() & ~blank
        if wrong.any():
            n_fields = width - extra.to_numpy()[:, ::-1].argmax(axis=1)
            for i in np.flatnonzero(wrong)[:1]:
                reasons.setdefault(int(line_no[i]), f"row has {int(n_fields[i])} fields, the file's rows "
                                                    f"{expect_fields} (an extra field, or a separator inside "
                                                    "a field?)")
            bad |= wrong
    for key, col in stripped.items():
        if key in ("user", "item"):
            wrong = (col == "").to_numpy() & ~blank
            reason = f"field {key!r} (column {used[key]}) is empty"
            for i in np.flatnonzero(wrong)[:1]:
                reasons.setdefault(int(line_no[i]), reason)
            missing = col.str.lower().isin(_MISSING_IDS).to_numpy() & ~blank
            for i in np.flatnonzero(missing)[:1]:
                reasons.setdefault(int(line_no[i]), f"field {key!r} (column {used[key]}) is {col.iloc[i]!r}, "
                                                    f"a missing {key} id")
            wrong |= missing
            over = np.zeros(len(col), dtype=bool) if key in str_ids else _beyond_int64(col, wrong | blank | bad)
            for i in np.flatnonzero(over)[:1]:
                reasons.setdefault(int(line_no[i]), f"field {key!r} (column {used[key]}): {col.iloc[i]} is an "
                                                    "integer id beyond the 64-bit range")
            wrong |= over
            out[key] = col.to_numpy()
        else:
            values, wrong, expect = _numbers(key, col)
            wrong &= ~blank
            raw = col.to_numpy()
            for i in np.flatnonzero(wrong)[:1]:
                reasons.setdefault(
                    int(line_no[i]), f"field {key!r} (column {used[key]}): {raw[i]!r} is not {expect}"
                )
            out[key] = values
        bad |= wrong
    if bad.any():
        first_bad = int(line_no[np.flatnonzero(bad)[0]])
        if on_bad_lines == "error":
            raise DataError(
                f"{path}:{first_bad}: {reasons.get(first_bad, 'malformed row')} "
                f"({int(bad.sum())} malformed row(s); --on-bad-lines skip skips and counts them)"
            )
        report.skipped = int(bad.sum())
        report.skipped_lines = [int(x) for x in line_no[bad][:10]]
        report.first_reason = reasons.get(first_bad, "malformed row")
    keep = ~bad & ~blank
    report.rows = int(keep.sum())
    if final and report.rows == 0 and report.skipped:
        raise DataError(f"{path}: every row is malformed ({report.skipped} skipped, first on line "
                        f"{report.skipped_lines[0]}: {reasons.get(report.skipped_lines[0], 'malformed row')})")
    ratings = Ratings(
        users=_ids(stripped["user"][keep], "user" in str_ids),
        items=_ids(stripped["item"][keep], "item" in str_ids),
        ratings=None if out["rating"] is None else out["rating"][keep].astype(np.float32),
        timestamps=None if out["timestamp"] is None else out["timestamp"][keep].astype(np.int64),
        report=report,
    )
    return ratings.filter_min_rating(min_rating)


def _read_parquet(path: Path, cols: dict, on_bad_lines: str, min_rating: float | None) -> Ratings:
    try:
        frame = pd.read_parquet(path)
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'ncf[parquet]')") from e
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        raise DataError(f"{path}: cannot read Parquet ({e})") from None
    return read_frame(frame, cols, path, on_bad_lines, min_rating)


def read_frame(frame: pd.DataFrame, cols: dict, path: Path, on_bad_lines: str = "error",
               min_rating: float | None = None, line0: int = 0, str_ids: frozenset = frozenset(),
               final: bool = True) -> Ratings:
    """A DataFrame (from Parquet, or a user's own through ``ncf.from_pandas``) through the same
    validation as a text file; ``cols`` maps user/item/rating/timestamp to column names or
    positions; row i is reported as "line" ``line0 + i + 1`` of ``path`` (``line0``, ``str_ids``,
    ``final``: a record batch of a larger file, see :func:`iter_table`)."""
    names = [str(c) for c in frame.columns]
    positions = _resolve_columns(path, _fill_columns(cols, names), names)
    for key, p in positions.items():
        if p is not None and p >= len(names):
            raise DataError(f"{path}: {key} column {p} requested but the file has {len(names)} column(s)")
    df = pd.DataFrame(index=range(len(frame)))  # row i is reported as "line" i + 1
    for p in {p for p in positions.values() if p is not None}:
        col = frame.iloc[:, p]
        if pd.api.types.is_datetime64_any_dtype(col):  # -> unix seconds (naive times taken as UTC)
            utc = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
            col = ((utc - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("Int64")
        elif pd.api.types.is_float_dtype(col) and col.dropna().eq(col.dropna().round()).all():
            col = col.astype("Int64")  # 3.0 -> "3", as in a text file
        df[p] = col.astype(str).replace({"nan": "", "None": "", "<NA>": "", "NaT": ""}).to_numpy()
    df = df.reindex(columns=range(max(df.columns, default=-1) + 1))
    df.index = range(line0, line0 + len(df))
    ratings = _validate(df, path, positions, on_bad_lines, min_rating, str_ids=str_ids, final=final)
    ratings.report.columns = _column_labels(positions, names)
    if line0 == 0:
        label = ratings.report.columns.get("timestamp", "")
        ratings.report.warnings += _rating_like_times(path, ratings.timestamps, label, ratings.users)
    return ratings


# --- Known formats -----------------------------------------------------------------------


def read_ml100k(path: str | Path, **kw) -> Ratings:
    """MovieLens 100K ``u.data``: user, item, rating, timestamp separated by tabs."""
    return read_table(path, **FORMATS[read_ml100k], **kw)


def read_ml1m(path: str | Path, **kw) -> Ratings:
    """MovieLens 1M / 10M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``."""
    return read_table(path, **FORMATS[read_ml1m], **kw)


def read_ml_csv(path: str | Path, **kw) -> Ratings:
    """MovieLens 20M / 25M / latest ``ratings.csv`` with header ``userId,movieId,rating,timestamp``."""
    return read_table(path, **FORMATS[read_ml_csv], **kw)


# each known format's read_table columns (what ncf.data.rankload streams the file with)
FORMATS = {
    read_ml100k: {"user_col": 0, "item_col": 1, "rating_col": 2, "time_col": 3, "sep": "\t", "header": False},
    read_ml1m: {"user_col": 0, "item_col": 1, "rating_col": 2, "time_col": 3, "sep": "::", "header": False},
    read_ml_csv: {"user_col": "userId", "item_col": "movieId", "rating_col": "rating", "time_col": "timestamp",
                  "sep": ",", "header": True},
}


def read_ncf_rating(path: str | Path, **kw) -> Ratings:
    """NCF ``*.train.rating`` / ``*.test.rating``: user, item and optional rating and timestamp
    (2, 3 or 4 tab-separated columns, decided by the first non-blank line)."""
    return read_table(path, **ncf_rating_spec(path), **kw)


def ncf_rating_spec(path: str | Path) -> dict:
    """The :func:`read_table` columns of an NCF ``*.rating`` file, from its first non-blank line."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = next((ln for ln in f if ln.strip()), "")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid utf-8 text ({e.reason})") from None
    if not first:
        raise DataError(f"{path}: file is empty")
    n = len(first.rstrip("\r\n\t ").split("\t"))
    if n < 2:
        raise DataError(f"{path}:1: expected 2 to 4 tab-separated fields (user, item[, rating, time]), found {n}")
    return {"user_col": 0, "item_col": 1, "rating_col": 2 if n >= 3 else None, "time_col": 3 if n >= 4 else None,
            "sep": "\t", "header": False}


_HEAD = r"^\((-?\d+)\s*,\s*(-?\d+)\)$"


def read_ncf_negative(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NCF ``*.test.negative``: ``(user,item)\tneg1\t...``. Returns users ``[n]``, items
    ``[n]`` and negatives ``[n, W]`` (int64, rows shorter than the longest padded with -1).

    Negatives are returned as read (duplicates and the positive included); the split
    module removes those.
    """
    path = Path(path)
    text = _read_text(path, "utf-8")
    if not text.strip():
        raise DataError(f"{path}: no candidate rows")
    return _parse_negative(text, path)


def iter_ncf_negative(path: str | Path, chunk_bytes: int = CHUNK_BYTES):
    """:func:`read_ncf_negative` in chunks of about ``chunk_bytes`` (errors name the same line);
    each chunk's negatives as wide as its longest row (the caller pads to the file's)."""
    path = Path(path)
    for text, line0 in text_chunks(path, "utf-8", chunk_bytes):
        if text.strip():
            yield _parse_negative(text, path, line0)


def _parse_negative(text: str, path: Path, line0: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    width = _max_fields(text, "\t")
    try:  # fast: typed parse of a clean file
        df = pd.read_csv(io.StringIO(text), sep="\t", header=None, names=list(range(width)),
                         dtype={0: str, **dict.fromkeys(range(1, width), "float64")}, skip_blank_lines=True,
                         keep_default_na=False, na_values=[""], quoting=csv.QUOTE_NONE, engine="c")
        heads = df[0].str.strip().str.extract(_HEAD)
        values = df.iloc[:, 1:].to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        clean = (heads[0].notna().all() and np.isfinite(values[present]).all()
                 and (values[present] >= 0).all() and (values[present] == np.round(values[present])).all())
    except (ValueError, OverflowError, pd.errors.ParserError):
        clean = False
    if clean:
        negatives = np.where(present, np.nan_to_num(values, nan=-1), -1).astype(np.int64)
        negatives = negatives[:, : int(np.flatnonzero(present.any(axis=0)).max(initial=-1)) + 1]  # drop empty tail
        return heads[0].astype("int64").to_numpy(), heads[1].astype("int64").to_numpy(), negatives
    _negative_error(path, text, line0)
    raise AssertionError("unreachable")  # pragma: no cover


def _negative_error(path: Path, text: str, line0: int = 0) -> None:
    """Name the first malformed line of a ``.test.negative`` file (``text`` starts at line ``line0 + 1``)."""
    for no, line in enumerate(text.splitlines(), start=line0 + 1):
        if not line.strip():
            continue
        head, *rest = line.split("\t")
        if not re.match(_HEAD, head.strip()):
            raise DataError(f"{path}:{no}: first field should be '(user,item)' with two integers, found {head!r}")
        for k, x in enumerate(rest, start=2):
            x = x.strip()
            if x and not (x.isdigit()):
                raise DataError(f"{path}:{no}: field {k} (a negative item) {x!r} is not an item index "
                                "(an integer >= 0)")
    raise DataError(f"{path}: cannot parse as (user,item)<TAB>negatives lines")
