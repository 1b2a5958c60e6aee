"""Item attributes for re-ranking: a CSV joined to a trained run by RAW item id.

File format (header required, comma-separated)::

    item,price,margin,category
    1,2.99,0.35,Drama|Romance
    2,0.99,0.12,Comedy

- the item id column is ``item`` (or ``item_id``) if present, else the first column;
- the category column is ``category`` (or ``genres``) if present; an item may carry several
  categories separated by ``|`` (a Drama|Romance film counts towards both shares);
- every other column must be numeric (price, margin, ...): a non-number is an error naming
  file:line and column.

Items of the model missing from the file, and rows of the file naming items the model does
not know, are reported (``missing`` / ``unknown``), never silently guessed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ncf.data.interactions import IdMap
from ncf.data.readers import DataError
from ncf.errors import ConfigError

ID_COLUMNS = ("item", "item_id")
CATEGORY_COLUMNS = ("category", "genres")
CATEGORY_SEP = "|"


@dataclass
class ItemAttributes:
    """Attributes by item index of a run (``n_items`` rows).

    ``numeric[col]``: float64 [n_items] (0 where the item has no attributes);
    ``categories``: sorted category names; ``category_matrix``: bool [n_items, n_categories];
    ``has``: bool [n_items], the item has a row in the file.
    """

    n_items: int
    numeric: dict[str, np.ndarray]
    categories: list[str]
    category_matrix: np.ndarray
    has: np.ndarray
    unknown: list = field(default_factory=list)  # raw ids in the file that the model lacks
    path: str | None = None
    sha256: str | None = None

    @property
    def missing(self) -> np.ndarray:
        """Indexes of the model's items that have no row in the file."""
        return np.flatnonzero(~self.has)

    def category(self, name: str) -> np.ndarray:
        """float64 [n_items]: 1 where the item belongs to category ``name``."""
        if name not in self.categories:
            shown = ", ".join(self.categories[:20]) + (" ..." if len(self.categories) > 20 else "")
            raise ConfigError(f"unknown category {name!r} (the attributes have: {shown or 'no categories'})")
        return self.category_matrix[:, self.categories.index(name)].astype(np.float64)

    def column(self, name: str) -> np.ndarray:
        if name not in self.numeric:
            raise ConfigError(f"no numeric column {name!r} in the attributes "
                             f"(numeric columns: {', '.join(self.numeric) or 'none'})")
        return self.numeric[name]

    def report(self, item_map: IdMap | None = None, show: int = 10) -> dict:
        miss = self.missing
        out = {"items_with_attributes": int(self.has.sum()), "items_without_attributes": int(len(miss)),
               "unknown_rows": len(self.unknown)}
        if item_map is not None and len(miss):
            out["without_attributes_examples"] = item_map.raws(miss[:show])
        if self.unknown:
            out["unknown_examples"] = self.unknown[:show]
        return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    lower = {c.lower(): c for c in columns}
    return next((lower[d] for d in defaults if d in lower), None)


def load_attributes(path: str | Path, item_map: IdMap, id_col: str | None = None,
                    category_col: str | None = None) -> ItemAttributes:
    """Read an attributes CSV and align it with ``item_map`` (the run's raw item ids)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such attributes file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (expected a header such as item,price,category)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    columns = [str(c).strip() for c in df.columns]
    df.columns = columns
    if len(columns) < 2:
        raise DataError(f"{path}: need an item id column and at least one attribute column, got {columns}")
    if len(df) == 0:
        raise DataError(f"{path}: header only, no item rows")
    icol = _pick(columns, id_col, ID_COLUMNS, "item id", path) or columns[0]
    ccol = _pick(columns, category_col, CATEGORY_COLUMNS, "category", path)
    lines = np.arange(len(df)) + 2  # header is line 1

    raw = df[icol].str.strip()
    if (raw == "").any():
        raise DataError(f"{path}:{lines[np.flatnonzero((raw == '').to_numpy())[0]]}: empty item id")
    dup = raw.duplicated(keep="first").to_numpy()
    if dup.any():
        j = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((raw == raw.iloc[j]).to_numpy())[0])
        raise DataError(f"{path}:{lines[j]}: item {raw.iloc[j]!r} appears again (first on line {lines[first]})")

    numeric: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    for col in columns:
        if col in (icol, ccol):
            continue
        v = pd.to_numeric(df[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}:{lines[j]}: column {col!r}: {df[col].iloc[j]!r} is not a finite number "
                            f"(every column other than {icol!r}"
                            + (f" and {ccol!r}" if ccol else "") + " must be numeric)")
        values[col] = v

    index = np.array([-1 if (x := item_map.get(r)) is None else x for r in raw.tolist()], dtype=np.int64)
    known = index >= 0
    n = len(item_map)
    has = np.zeros(n, dtype=bool)
    has[index[known]] = True
    for col, v in values.items():
        full = np.zeros(n, dtype=np.float64)
        full[index[known]] = v[known]
        numeric[col] = full

    categories: list[str] = []
    cat_matrix = np.zeros((n, 0), dtype=bool)
    if ccol is not None:
        lists = [[c.strip() for c in s.split(CATEGORY_SEP) if c.strip()] for s in df[ccol].tolist()]
        categories = sorted({c for lst in lists for c in lst})
        pos = {c: j for j, c in enumerate(categories)}
        cat_matrix = np.zeros((n, len(categories)), dtype=bool)
        rows = np.repeat(index, [len(lst) for lst in lists])
        cols = np.array([pos[c] for lst in lists for c in lst], dtype=np.int64)
        keep = rows >= 0
        cat_matrix[rows[keep], cols[keep]] = True
    unknown = raw[~known].tolist()
    return ItemAttributes(n, numeric, categories, cat_matrix, has, unknown, str(path.resolve()), file_sha256(path))


def movielens_attributes(item_map: IdMap, item_info: dict | None, seed: int = 0) -> pd.DataFrame:
    """A demo attributes table for a MovieLens run: categories from genres, synthetic prices.

    The price is synthetic and documented: ``exp(N(log 2.5, 0.5))`` per item, drawn with
    ``numpy.random.default_rng(seed)`` in item-index order, clipped to [0.99, 9.99] and rounded
    to the cent; ``margin`` is uniform on [0.1, 0.6]. Neither depends on the ratings, so
    revenue and relevance pull in different directions, as they would in a shop.
    """
    if not item_info or not item_info.get("genres"):
        raise ConfigError("the run has no items.json with genres: categories cannot be derived "
                         "(MovieLens runs have one; write your own attributes CSV for other data)")
    genres = item_info["genres"]
    if len(genres) != len(item_map):
        raise ConfigError(f"items.json lists {len(genres)} items, the run has {len(item_map)}")
    rng = np.random.default_rng(seed)
    price = np.clip(np.exp(rng.normal(np.log(2.5), 0.5, len(item_map))), 0.99, 9.99).round(2)
    margin = rng.uniform(0.1, 0.6, len(item_map)).round(3)
    return pd.DataFrame({
        "item": item_map.raw_ids,
        "price": price,
        "margin": margin,
        "category": [CATEGORY_SEP.join(g) for g in genres],
    })


def write_movielens_attributes(run_dir: str | Path, out: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write :func:`movielens_attributes` for the run in ``run_dir`` to the CSV ``out`` (an
    existing file only with ``overwrite``, never inside a run: :func:`ncf.outputs.prepare_output_file`)."""
    from ncf.checkpoint import load_item_info, load_run_maps
    from ncf.outputs import atomic_write, prepare_output_file

    out = prepare_output_file(out, overwrite)
    _, items = load_run_maps(Path(run_dir))
    df = movielens_attributes(items, load_item_info(Path(run_dir)), seed)
    return atomic_write(out, lambda tmp: df.to_csv(tmp, index=False))
