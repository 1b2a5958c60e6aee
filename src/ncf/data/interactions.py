"""Implicit-feedback interactions: one users x items CSR matrix and the id maps.

Orientation is always users x items (rows are users, columns are items); no
function in this package takes or returns the transpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ncf.data.ids import canonical_id, canonical_ids
from ncf.errors import ConfigError, UnknownIdError


class IdMap:
    """Bidirectional map between raw ids (as read from a file) and dense indexes 0..n-1.

    Raw ids are kept as ``int`` when every raw id is an integer, else as ``str``;
    :meth:`index` accepts either spelling (``"42"`` or ``42``).
    """

    def __init__(self, raw_ids: list | np.ndarray):
        raw = list(raw_ids.tolist() if isinstance(raw_ids, np.ndarray) else raw_ids)
        if len(set(raw)) != len(raw):
            raise ConfigError("IdMap: raw ids must be unique")
        self._raw: list = raw
        self._index: dict = {r: i for i, r in enumerate(raw)}
        self._integer: bool | None = None

    @classmethod
    def from_values(cls, values: np.ndarray) -> tuple[IdMap, np.ndarray]:
        """Map ``values`` to indexes in order of first sorted appearance; returns (map, codes)."""
        uniques, codes = np.unique(values, return_inverse=True)
        return cls(uniques), codes.astype(np.int64)

    def __len__(self) -> int:
        return len(self._raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._raw == other._raw

    @property
    def raw_ids(self) -> list:
        return self._raw

    def raw(self, index: int):
        return self._raw[int(index)]

    def raws(self, indexes) -> list:
        return [self._raw[int(i)] for i in indexes]

    @property
    def integer(self) -> bool:
        """True when every raw id is an integer (the map of an integer id column)."""
        if self._integer is None:
            self._integer = all(isinstance(r, int) and not isinstance(r, bool) for r in self._raw)
        return self._integer

    def get(self, raw_id) -> int | None:
        """Index of ``raw_id`` or None, under the one id rule (``ncf.data.ids``): surrounding
        whitespace is stripped, ``"12"`` and ``" 012 "`` find the int id 12, 12 finds ``"12"``."""
        try:
            if raw_id in self._index:  # exactly as stored (also a map built by hand with mixed types)
                return self._index[raw_id]
            key = canonical_id(raw_id, self.integer)
        except (TypeError, ValueError):  # unhashable, or not an id of this map's kind
            return None
        return self._index.get(key)

    def index(self, raw_id, what: str = "id") -> int:
        idx = self.get(raw_id)
        if idx is None:
            raise UnknownIdError(f"unknown {what} {raw_id!r}")
        return idx

    def to_json(self) -> list:
        return list(self._raw)

    @classmethod
    def from_json(cls, data: list) -> IdMap:
        if not isinstance(data, list):
            raise ConfigError("IdMap JSON must be a list of raw ids")
        return cls(data)


def _normalise_raw(values: np.ndarray) -> np.ndarray:
    """Raw ids as int64 where they all are integers, else as stripped str (``ncf.data.ids``)."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
        return values.astype(str)
    if values.dtype.kind == "S":
        values = values.astype(str)
    return canonical_ids(pd.Series(values, dtype=object))  # the one id rule (ncf.data.ids)


@dataclass
class Interactions:
    """A users x items CSR matrix of implicit 1s with its id maps.

    ``timestamps`` and ``ratings``, where present, are CSR matrices aligned with
    ``matrix`` (same ``indptr``/``indices``). ``n_duplicates`` counts the
    repeated (user, item) pairs collapsed on construction (the latest kept).
    """

    matrix: sp.csr_matrix
    user_map: IdMap
    item_map: IdMap
    timestamps: np.ndarray | None = None  # aligned with matrix.data, int64
    ratings: np.ndarray | None = None  # aligned with matrix.data, float32
    n_duplicates: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        m = self.matrix
        if m.shape != (len(self.user_map), len(self.item_map)):
            raise ConfigError(
                f"matrix shape {m.shape} does not match id maps "
                f"({len(self.user_map)} users, {len(self.item_map)} items)"
            )
        for name in ("timestamps", "ratings"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != m.nnz:
                raise ConfigError(f"{name} has {len(arr)} values for {m.nnz} interactions")

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @property
    def nnz(self) -> int:
        return self.matrix.nnz

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.n_users * self.n_items)

    @classmethod
    def from_indices(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        user_map: IdMap,
        item_map: IdMap,
        timestamps: np.ndarray | None = None,
        ratings: np.ndarray | None = None,
        meta: dict | None = None,
    ) -> Interactions:
        """Build from index arrays; duplicate pairs collapse to the latest (by timestamp, then
        by position in the input)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        n_users, n_items = len(user_map), len(item_map)
        if len(users) != len(items):
            raise ConfigError("users and items differ in length")
        if len(users) and (users.min() < 0 or users.max() >= n_users):
            raise ConfigError("user index out of range of the user map")
        if len(items) and (items.min() < 0 or items.max() >= n_items):
            raise ConfigError("item index out of range of the item map")
        key = users * n_items + items
        pos = np.arange(len(key))
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.int64)
            order = np.lexsort((pos, timestamps, key))  # by key, then time, then position
        else:
            order = np.lexsort((pos, key))
        key_sorted = key[order]
        last = np.ones(len(key_sorted), dtype=bool)
        last[:-1] = key_sorted[1:] != key_sorted[:-1]
        keep = order[last]  # sorted by key => CSR order
        n_dup = len(key) - len(keep)
        u, i = users[keep], items[keep]
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=n_users), out=indptr[1:])
        matrix = sp.csr_matrix(
            (np.ones(len(keep), dtype=np.float32), i.astype(np.int32), indptr),
            shape=(n_users, n_items),
        )
        return cls(
            matrix=matrix,
            user_map=user_map,
            item_map=item_map,
            timestamps=None if timestamps is None else timestamps[keep],
            ratings=None if ratings is None else np.asarray(ratings, dtype=np.float32)[keep],
            n_duplicates=int(n_dup),
            meta=dict(meta or {}),
        )

    @classmethod
    def from_raw(
        cls,
        users_raw: np.ndarray,
        items_raw: np.ndarray,
        timestamps: np.ndarray | None = None,
        ratings: np.ndarray | None = None,
        meta: dict | None = None,
    ) -> Interactions:
        """Build from raw id arrays: the id maps are the sorted distinct raw ids."""
        user_map, u = IdMap.from_values(_normalise_raw(np.asarray(users_raw)))
        item_map, i = IdMap.from_values(_normalise_raw(np.asarray(items_raw)))
        return cls.from_indices(u, i, user_map, item_map, timestamps, ratings, meta)

    def coo(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) index arrays in CSR order."""
        m = self.matrix
        users = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        return users, m.indices.astype(np.int64)

    def user_counts(self) -> np.ndarray:
        return np.diff(self.matrix.indptr)

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.matrix.indices, minlength=self.n_items)

    def save_maps(self, directory: str | Path) -> None:
        save_idmaps(directory, self.user_map, self.item_map)


def save_idmaps(directory: str | Path, user_map: IdMap, item_map: IdMap) -> None:
    """Write ``DIR/idmap.json`` atomically (a temporary file renamed over it)."""
    path = Path(directory) / "idmap.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"users": user_map.to_json(), "items": item_map.to_json()}))
    tmp.replace(path)


def load_idmaps(directory: str | Path) -> tuple[IdMap, IdMap]:
    path = Path(directory) / "idmap.json"
    try:
        data = json.loads(path.read_text())
        return IdMap.from_json(data["users"]), IdMap.from_json(data["items"])
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: not a valid id map ({e})") from e
