"""Side information: item titles and genres, and user / item feature tables.

MovieLens side files: ``u.item`` (ML-100K, latin-1, ``|``), ``movies.dat`` (ML-1M,
latin-1, ``::``), ``movies.csv`` (ML-20M/25M/latest, UTF-8 with a header), ``u.user``
and ``users.dat`` (demographics). Any other source can bring its own feature CSV files
(:func:`read_feature_csv`).

A :class:`FeatureTable` holds, for every user (or item) index of a dataset, one value per
:class:`Field`: a code for categorical and bucketised fields (``int64 [n]``), a 0/1 row for
multi-hot fields (``float32 [n, V]``). Code 0 of every field is ``<unk>``: a missing or
unparseable value, or an entity absent from the side file. Those are counted in the
table's ``report``, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncf.data.readers import DataError, sniff_sep
from ncf.errors import ConfigError

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


def _read_latin1(path: Path) -> str:
    return path.read_bytes().decode("latin-1")


def read_u_item(path: Path) -> dict[int, tuple[str, list[str]]]:
    """ML-100K ``u.item``: id|title|release|video release|url|19 genre flags."""
    out: dict[int, tuple[str, list[str]]] = {}
    for no, line in enumerate(_read_latin1(path).splitlines(), start=1):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) < 5 + len(ML100K_GENRES):
            raise DataError(f"{path}:{no}: expected {5 + len(ML100K_GENRES)} '|' fields, found {len(f)}")
        try:
            item = int(f[0])
            flags = [int(x) for x in f[5: 5 + len(ML100K_GENRES)]]
        except ValueError as e:
            raise DataError(f"{path}:{no}: {e}") from None
        out[item] = (f[1], [g for g, on in zip(ML100K_GENRES, flags, strict=True) if on])
    return out


def read_movies_dat(path: Path) -> dict[int, tuple[str, list[str]]]:
    """ML-1M ``movies.dat``: ``MovieID::Title::Genre|Genre``."""
    out: dict[int, tuple[str, list[str]]] = {}
    for no, line in enumerate(_read_latin1(path).splitlines(), start=1):
        if not line.strip():
            continue
        f = line.split("::")
        if len(f) != 3:
            raise DataError(f"{path}:{no}: expected MovieID::Title::Genres, found {len(f)} fields")
        try:
            item = int(f[0])
        except ValueError:
            raise DataError(f"{path}:{no}: field 'MovieID': {f[0]!r} is not an integer") from None
        out[item] = (f[1], [g for g in f[2].split("|") if g])
    return out


def read_movies_csv(path: Path) -> dict[int, tuple[str, list[str]]]:
    """ML-20M/25M/latest ``movies.csv``: ``movieId,title,genres`` with a header."""
    out: dict[int, tuple[str, list[str]]] = {}
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8")))
    header = next(reader, None)
    if header != ["movieId", "title", "genres"]:
        raise DataError(f"{path}:1: expected header movieId,title,genres, found {header}")
    for no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 3:
            raise DataError(f"{path}:{no}: expected 3 fields, found {len(row)}")
        try:
            item = int(row[0])
        except ValueError:
            raise DataError(f"{path}:{no}: field 'movieId': {row[0]!r} is not an integer") from None
        genres = [] if row[2] == "(no genres listed)" else row[2].split("|")
        out[item] = (row[1], genres)
    return out


def read_item_titles(folder: Path) -> dict | None:
    """``{raw item id: (title, [genres])}`` from whichever MovieLens side file ``folder``
    holds, or None where it holds none."""
    folder = Path(folder)
    for fname, reader in (("u.item", read_u_item), ("movies.dat", read_movies_dat),
                          ("movies.csv", read_movies_csv)):
        if (folder / fname).exists():
            return reader(folder / fname)
    return None


# --- Feature tables ----------------------------------------------------------------------

UNKNOWN = "<unk>"
KINDS = ("cat", "bucket", "multi")
# tokens a generic feature CSV may use for "no value" (compared lower-cased)
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "unknown"})
AGE_EDGES = [18.0, 25.0, 35.0, 45.0, 50.0, 56.0]  # ML-1M's age groups; ML-100K ages fall into them
YEAR_EDGES = [1940.0, 1950.0, 1960.0, 1970.0, 1980.0, 1990.0, 1995.0]
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bucket_labels(edges: list[float]) -> list[str]:
    """``[<unk>, <e0, [e0,e1), ..., >=eN]`` for sorted ``edges``."""
    mids = [f"[{_num(a)},{_num(b)})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [UNKNOWN, f"<{_num(edges[0])}", *mids, f">={_num(edges[-1])}"]


@dataclass
class Field:
    """One feature: ``cat`` (one value), ``bucket`` (a number cut at ``edges``) or ``multi``
    (a set of values, ``a|b``). ``vocab[0]`` is always ``<unk>``."""

    name: str
    kind: str
    vocab: list[str] = field(default_factory=list)
    edges: list[float] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"feature {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "bucket":
            if not self.edges or sorted(self.edges) != list(self.edges):
                raise ConfigError(f"feature {self.name!r}: bucket edges must be sorted and non-empty")
            self.vocab = bucket_labels(list(self.edges))
        elif not self.vocab or self.vocab[0] != UNKNOWN:
            self.vocab = [UNKNOWN, *[v for v in self.vocab if v != UNKNOWN]]
        self._lookup = {v: i for i, v in enumerate(self.vocab)}
        self._lower = {v.lower(): i for i, v in enumerate(self.vocab)}

    @property
    def size(self) -> int:
        return len(self.vocab)

    def _one(self, value: str) -> int | None:
        """Code of one non-missing value, None if unknown or unparseable."""
        if self.kind == "bucket":
            try:
                x = float(value)
            except ValueError:
                return None
            if not np.isfinite(x):
                return None
            return 1 + int(np.searchsorted(np.asarray(self.edges), x, side="right"))
        code = self._lookup.get(value, self._lower.get(value.lower()))
        return None if code == 0 else code

    def parse(self, value: Any) -> tuple[int | list[int], str]:
        """(code, or codes for multi; status ``ok`` | ``missing`` | ``unparseable``)."""
        if self.kind == "multi":
            parts = value if isinstance(value, list) else ([] if value is None else str(value).split("|"))
            parts = [p.strip() for p in parts if p is not None and p.strip()]
            if not parts:
                return [0], "missing"
            codes = [self._one(p) for p in parts]
            good = sorted({c for c in codes if c is not None})
            return (good or [0]), ("ok" if None not in codes else "unparseable")
        if value is None or not str(value).strip():
            return 0, "missing"
        code = self._one(str(value).strip())
        return (0, "unparseable") if code is None else (code, "ok")

    def valid_values(self) -> str:
        if self.kind == "bucket":
            return f"a number (buckets {', '.join(self.vocab[1:])})"
        return ", ".join(self.vocab[1:]) + (" (several joined by '|')" if self.kind == "multi" else "")

    def encode_strict(self, value: str) -> int | list[int]:
        """Like :meth:`parse`, but an unknown or unparseable value is an error naming the valid ones."""
        codes, status = self.parse(value)
        if status != "ok":
            raise ConfigError(f"feature {self.name!r}: cannot use {value!r}; valid: {self.valid_values()}")
        return codes

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "bucket":
            d["edges"] = list(self.edges)
        else:
            d["vocab"] = list(self.vocab)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Field:
        try:
            return cls(d["name"], d["kind"], list(d.get("vocab", [])), d.get("edges"))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a feature description: {d!r} ({e})") from None


@dataclass
class FeatureTable:
    """Feature values of every user (or item) index: ``values[f]`` is ``int64 [n]`` for a
    cat/bucket field, ``float32 [n, fields[f].size]`` (0/1) for a multi field."""

    fields: list[Field]
    values: list[np.ndarray]
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values[0]) if self.values else int(self.report.get("rows", 0))

    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def encode(self, features: dict[str, str]) -> list[np.ndarray]:
        return encode_features(self.fields, features)


def encode_features(fields: list[Field], features: dict[str, str]) -> list[np.ndarray]:
    """One new entity's values (``{"age": "25", "gender": "F"}``) as a one-row table
    (``[1]`` codes or ``[1, V]`` multi-hot per field); fields not given are ``<unk>``.
    Unknown names or values raise ``ValueError`` listing the valid ones."""
    by_name = {f.name.lower(): f for f in fields}
    unknown = [k for k in features if k.lower() not in by_name]
    if unknown:
        valid = "; ".join(f"{f.name}: {f.valid_values()}" for f in fields) or "none (the model has no user features)"
        raise ConfigError(f"unknown feature(s) {', '.join(map(repr, unknown))}; valid features: {valid}")
    given = {k.lower(): v for k, v in features.items()}
    row = []
    for f in fields:
        v = given.get(f.name.lower())
        codes = f.encode_strict(v) if v is not None else f.parse(None)[0]
        if f.kind == "multi":
            hot = np.zeros((1, f.size), np.float32)
            hot[0, codes] = 1.0
            row.append(hot)
        else:
            row.append(np.array([codes], np.int64))
    return row


def parse_feature_spec(spec: str) -> dict[str, str]:
    """``"age=25,gender=F,occupation=artist"`` -> ``{"age": "25", ...}`` (a multi value: ``genres=A|B``)."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--features expects NAME=VALUE pairs separated by commas, got {part.strip()!r}")
        if key.strip() in out:
            raise ConfigError(f"--features names {key.strip()!r} twice")
        out[key.strip()] = value.strip()
    if not out:
        raise ConfigError("--features is empty: give NAME=VALUE pairs, e.g. age=25,gender=F")
    return out


def _with_vocab(f: Field, records: dict[str, dict[str, Any]]) -> Field:
    if f.kind == "bucket" or f.size > 1:
        return f
    seen = set()
    for rec in records.values():
        v = rec.get(f.name)
        if v is None:
            continue
        parts = (v if isinstance(v, list) else str(v).split("|")) if f.kind == "multi" else [v]
        seen.update(str(p).strip() for p in parts if p is not None and str(p).strip())
    return Field(f.name, f.kind, sorted(seen))


def build_table(records: dict[str, dict[str, Any]], fields: list[Field], raw_ids: list,
                source: str | None = None) -> FeatureTable:
    """Align ``records`` (``{str(raw id): {field name: value}}``) with ``raw_ids`` (an IdMap's,
    by index). Fields without a vocabulary get the sorted values seen in ``records``."""
    fields = [_with_vocab(f, records) for f in fields]
    n = len(raw_ids)
    keys = [str(r) for r in raw_ids]
    present = np.array([k in records for k in keys], dtype=bool)
    stats = {f.name: {"kind": f.kind, "size": f.size, "missing": 0, "unparseable": 0, "unknown": 0} for f in fields}
    values = []
    for f in fields:
        col = np.zeros((n, f.size), np.float32) if f.kind == "multi" else np.zeros(n, np.int64)
        st = stats[f.name]
        for i, k in enumerate(keys):
            rec = records.get(k)
            code, status = f.parse(None if rec is None else rec.get(f.name))
            if rec is not None and status != "ok":
                st[status] += 1
            if f.kind == "multi":
                col[i, code] = 1.0
            else:
                col[i] = code
        st["unknown"] = int((col[:, 0] > 0).sum()) if f.kind == "multi" else int((col == 0).sum())
        values.append(col)
    report = {"source": source, "rows": n, "rows_in_file": len(records), "absent": int((~present).sum()),
              "not_in_dataset": len(set(records) - set(keys)), "fields": stats}
    return FeatureTable(fields, values, report)


# --- MovieLens side files ----------------------------------------------------------------


def _lines(path: Path, sep: str, width: int, what: str):
    for no, line in enumerate(_read_latin1(path).splitlines(), start=1):
        if not line.strip():
            continue
        f = line.split(sep)
        if len(f) != width:
            raise DataError(f"{path}:{no}: expected {what} ({width} {sep!r}-separated fields), found {len(f)}")
        try:
            int(f[0])
        except ValueError:
            raise DataError(f"{path}:{no}: id {f[0]!r} is not an integer") from None
        yield f


def read_u_user(path: Path) -> dict[str, dict[str, Any]]:
    """ML-100K ``u.user``: ``id|age|gender|occupation|zip``; zip reduced to its first digit."""
    return {str(int(f[0])): {"age": f[1], "gender": f[2], "occupation": f[3], "zip": f[4].strip()[:1]}
            for f in _lines(Path(path), "|", 5, "id|age|gender|occupation|zip")}


def read_users_dat(path: Path) -> dict[str, dict[str, Any]]:
    """ML-1M ``users.dat``: ``UserID::Gender::Age::Occupation::Zip``; occupation codes 0-20 named
    as in the ML-1M README (another code is kept as is and counted unparseable)."""
    out = {}
    for f in _lines(Path(path), "::", 5, "UserID::Gender::Age::Occupation::Zip"):
        occ = f[3].strip()
        if occ.isdigit() and int(occ) < len(ML1M_OCCUPATIONS):
            occ = ML1M_OCCUPATIONS[int(occ)]
        out[str(int(f[0]))] = {"gender": f[1], "age": f[2], "occupation": occ, "zip": f[4].strip()[:1]}
    return out


_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


def read_item_records(folder: Path) -> dict[str, dict[str, Any]] | None:
    """``{str(item id): {"genres": [...], "year": "1995"}}`` from the folder's MovieLens item
    file (release date of ``u.item``, else the year in the title), or None where there is none."""
    folder = Path(folder)
    table = read_item_titles(folder)
    if table is None:
        return None
    dates: dict[int, str] = {}
    if (folder / "u.item").exists():
        for line in _read_latin1(folder / "u.item").splitlines():
            f = line.split("|")
            if len(f) > 2 and f[0].strip().isdigit():
                dates[int(f[0])] = f[2].strip()[-4:]
    out = {}
    for item, (title, genres) in table.items():
        m = _YEAR_IN_TITLE.search(title)
        year = dates.get(item) or (m.group(1) if m else None)
        out[str(item)] = {"genres": [g for g in genres if g != "unknown"], "year": year}
    return out


MOVIELENS_USER_FIELDS = {
    "u.user": (read_u_user, lambda: [Field("age", "bucket", edges=AGE_EDGES), Field("gender", "cat", ["F", "M"]),
                                     Field("occupation", "cat"), Field("zip", "cat", list("0123456789"))]),
    "users.dat": (read_users_dat, lambda: [
        Field("age", "bucket", edges=AGE_EDGES), Field("gender", "cat", ["F", "M"]),
        Field("occupation", "cat", ML1M_OCCUPATIONS), Field("zip", "cat", list("0123456789"))]),
}


def item_fields() -> list[Field]:
    return [Field("genres", "multi"), Field("year", "bucket", edges=YEAR_EDGES)]


# --- Generic feature CSV files -----------------------------------------------------------


def read_feature_csv(path: str | Path, max_categories: int = 20) -> tuple[dict[str, dict[str, Any]], list[Field]]:
    """A user or item feature file: a header row, the id in the first column, one feature a
    column (comma, tab or ``;`` separated, UTF-8). A column's kind is given by a ``:cat``,
    ``:num`` or ``:multi`` suffix in the header, else inferred: ``multi`` where a value holds
    ``|``; ``bucket`` (quintiles) where at least 95% of the values are numbers and there are
    more than ``max_categories`` distinct ones; ``cat`` otherwise. Missing tokens (empty,
    NA, null, ?, ...) are ``<unk>``; rows with the wrong number of fields, empty or
    duplicate ids are errors naming the line. Returns ``({id: {feature: value}}, fields)``;
    :func:`build_table` fills the cat/multi vocabularies."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: feature file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    lines = [(no, ln) for no, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise DataError(f"{path}: feature file is empty")
    sep = sniff_sep(lines[0][1]) if any(c in lines[0][1] for c in ",\t;") else None
    if sep not in (",", "\t", ";"):
        raise DataError(f"{path}:1: expected a header 'id,feature,...' separated by ',', tab or ';'")
    rows = list(csv.reader([ln for _, ln in lines], delimiter=sep))
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataError(f"{path}:{lines[0][0]}: the header needs an id column and at least one feature")
    names, kinds = [], []
    for h in header[1:]:
        name, _, kind = h.partition(":")
        kind = {"": None, "cat": "cat", "num": "bucket", "multi": "multi"}.get(kind.strip(), "?")
        if kind == "?" or not name.strip():
            raise DataError(f"{path}:{lines[0][0]}: bad column {h!r} (write NAME or NAME:cat|num|multi)")
        names.append(name.strip())
        kinds.append(kind)
    if len(set(names)) != len(names):
        raise DataError(f"{path}:{lines[0][0]}: duplicate feature column names in {header}")
    records: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for (no, _), row in zip(lines[1:], rows[1:], strict=True):
        if len(row) != len(header):
            raise DataError(f"{path}:{no}: expected {len(header)} fields (as the header), found {len(row)}")
        key = row[0].strip()
        if not key:
            raise DataError(f"{path}:{no}: empty id")
        if key in records:
            raise DataError(f"{path}:{no}: duplicate id {key!r} (first on line {first_line[key]})")
        first_line[key] = no
        records[key] = {n: (None if v.strip().lower() in MISSING_TOKENS else v.strip())
                        for n, v in zip(names, row[1:], strict=True)}
    fields = [_infer_field(n, k, [r[n] for r in records.values()], max_categories) for n, k in zip(names, kinds,
                                                                                                 strict=True)]
    return records, fields


def _infer_field(name: str, kind: str | None, values: list[str | None], max_categories: int) -> Field:
    present = [v for v in values if v is not None]
    if kind is None:
        if any("|" in v for v in present):
            kind = "multi"
        else:
            nums = _as_numbers(present)
            ok = np.isfinite(nums)
            numeric = len(present) > 0 and ok.mean() >= 0.95
            kind = "bucket" if numeric and len(np.unique(nums[ok])) > max_categories else "cat"
    if kind != "bucket":
        return Field(name, kind)
    nums = _as_numbers(present)
    nums = nums[np.isfinite(nums)]
    if not len(nums):
        raise DataError(f"feature {name!r}: declared numeric but holds no numbers")
    edges = np.unique(np.quantile(nums, [0.2, 0.4, 0.6, 0.8]))
    return Field(name, "bucket", edges=[float(e) for e in edges])


def _as_numbers(values: list[str]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except ValueError:
            pass
    return out


# --- A dataset's side features -----------------------------------------------------------


@dataclass
class SideFeatures:
    users: FeatureTable
    items: FeatureTable

    def report(self) -> dict[str, Any]:
        return {"users": self.users.report, "items": self.items.report}


def source_folder(dataset) -> Path | None:
    """The folder a dataset was read from (where its side files are), from its read report."""
    read = (getattr(dataset, "report", None) or {}).get("read") or {}
    path = read.get("path") or (read.get("train") or {}).get("path")
    return Path(path).parent if path else None


def _empty(n: int, source: str | None = None) -> FeatureTable:
    return FeatureTable([], [], {"source": source, "rows": n, "fields": {}})


def side_features(dataset, user_file: str | Path | None = None, item_file: str | Path | None = None,
                  folder: str | Path | None = None) -> SideFeatures:
    """User and item feature tables aligned with ``dataset``'s indexes: from the given CSV
    files, else from the MovieLens side files of the dataset's folder (``u.user``/``u.item``,
    ``users.dat``/``movies.dat``), else empty (no fields)."""
    folder = Path(folder) if folder else source_folder(dataset)
    user_raw, item_raw = dataset.train.user_map.raw_ids, dataset.train.item_map.raw_ids
    if user_file:
        records, fields = read_feature_csv(user_file)
        users = build_table(records, fields, user_raw, str(user_file))
    else:
        users = _empty(len(user_raw))
        for fname, (reader, make_fields) in MOVIELENS_USER_FIELDS.items():
            if folder is not None and (folder / fname).exists():
                users = build_table(reader(folder / fname), make_fields(), user_raw, str(folder / fname))
                break
    if item_file:
        records, fields = read_feature_csv(item_file)
        items = build_table(records, fields, item_raw, str(item_file))
    else:
        records = read_item_records(folder) if folder is not None else None
        items = _empty(len(item_raw)) if records is None else build_table(records, item_fields(), item_raw,
                                                                           str(folder))
    return SideFeatures(users, items)
