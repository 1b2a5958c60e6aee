"""Side information: item titles and genres (and, later, user and item feature tensors).

MovieLens side files: ``u.item`` (ML-100K, latin-1, ``|``), ``movies.dat`` (ML-1M,
latin-1, ``::``), ``movies.csv`` (ML-20M/25M/latest, UTF-8 with a header).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ncf.data.readers import DataError

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
