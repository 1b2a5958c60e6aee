"""One rank's users of a dataset, read without the whole file in memory (``--shard-tables``).

What :func:`ncf.data.datasets.load_dataset` gives one process, restricted to the users of one
rank (:func:`ncf.data.partition.user_bounds` over the training counts, as the whole-file path
partitions them): the same id maps, the same training rows, held-out items and candidates of
those users. A rank holds its users' interactions plus O(users + items) of maps and counts:

1. **Scan** (every rank, streaming): the ratings file in chunks through the reader
   (:func:`ncf.data.readers.iter_table`: the same layout detection, parse and validation, so a
   malformed row is named by file and line as :func:`~ncf.data.readers.read_table` names it)
   builds the sorted distinct user and item ids (the id maps) and each user's row count; no
   row is kept. A column that is integer in some chunks and not in others is scanned again
   as strings (the one id rule decides over the whole column).
2. **Own rows** (streaming again): the training counts those row counts imply (leave-one-out
   takes a test and a validation item from each user with enough) give a first partition
   (:func:`ncf.data.partition.user_bounds`); each rank keeps the rows of its users.
3. **Exact partition**: each rank counts its users' distinct items (repeated rows collapse);
   one all-reduce of one integer a user gives every rank every user's training count, so the
   ranges are ``user_bounds`` over the training counts, as the whole-file path draws them.
   Where repeated rows moved a range, the rank reads the file once more keeping only the users
   it gained.
4. **Split per user, locally** (:func:`ncf.data.datasets.loo_split`; the NCF layout's given test
   files, :func:`ncf.data.datasets.ncf_split`), with per-user split draws
   (``DataConfig.split_draws = "per_user"``): no choice needs another user. A second all-reduce
   adds up the report (interactions, duplicates, holdout sizes).

The file must not change between the passes: its size and modification time are checked
after each pass (a :class:`DataError` says so). Sources: ratings files (text, gzip, Parquet,
the named MovieLens sets) with the leave-one-out split, and the NCF pre-split layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ncf.data import readers
from ncf.data.datasets import (
    DataConfig,
    Source,
    _item_info,
    _ncf_maps,
    check_ncf_options,
    locate_source,
    loo_split,
    ncf_prefix,
    ncf_split,
)
from ncf.data.interactions import IdMap, Interactions
from ncf.data.partition import user_bounds
from ncf.data.split import Dataset, HoldOut, RankPart
from ncf.errors import ConfigError, DataError

AllSum = Callable[[np.ndarray], np.ndarray]  # int64 vector -> its sum over ranks


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return st.st_size, st.st_mtime_ns


def _check_stamp(path: Path, stamp: tuple[int, int], when: str) -> None:
    now = _stamp(path)
    if now != stamp:
        raise DataError(f"{path}: changed while it was being read ({when}: size {stamp[0]} -> {now[0]} bytes, "
                        f"modified {stamp[1]} -> {now[1]} ns); each rank reads it twice, so it must not change "
                        "during a run: start again once it is complete")


class _Uniques:
    """Sorted distinct values with their counts, merged chunk by chunk."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.parts.append(np.unique(values, return_counts=True))
            if len(self.parts) >= 16:
                self.parts = [self._merge()]

    def _merge(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        if len(self.parts) == 1:
            return self.parts[0]
        values, inv = np.unique(np.concatenate([v for v, _ in self.parts]), return_inverse=True)
        counts = np.bincount(inv.ravel(), weights=np.concatenate([c for _, c in self.parts]), minlength=len(values))
        return values, counts.astype(np.int64)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.parts = [self._merge()]
        return self.parts[0]


# -- ratings files (leave-one-out) -------------------------------------------------------------

@dataclass
class _Scan:
    path: Path
    spec: dict
    stamp: tuple[int, int]
    user_ids: np.ndarray  # sorted distinct raw ids (the id map)
    item_ids: np.ndarray
    rows: np.ndarray  # rows of each user
    report: readers.ReadReport
    str_ids: frozenset
    timestamps: bool
    ratings: bool


def _iter(scan_or_src, cfg: DataConfig, chunk_bytes: int, str_ids: frozenset):
    path, spec = scan_or_src
    return readers.iter_table(path, **spec, on_bad_lines=cfg.on_bad_lines, min_rating=cfg.min_rating,
                              chunk_bytes=chunk_bytes, str_ids=str_ids)


def scan_ratings(src: Source, cfg: DataConfig, chunk_bytes: int = readers.CHUNK_BYTES) -> _Scan:
    """Pass 1 over a ratings file: id maps and row counts, no rows kept."""
    stamp = _stamp(src.path)
    str_ids: frozenset = frozenset()
    for _ in range(2):
        users, items = _Uniques(), _Uniques()
        reports, kinds = [], {"user": set(), "item": set()}
        times = rates = False
        for r in _iter((src.path, src.spec), cfg, chunk_bytes, str_ids):
            reports.append(r.report)
            times, rates = r.timestamps is not None, r.ratings is not None
            if not len(r):
                continue
            kinds["user"].add(r.users.dtype.kind)
            kinds["item"].add(r.items.dtype.kind)
            users.add(r.users)
            items.add(r.items)
        mixed = frozenset(k for k, v in kinds.items() if len(v) > 1)
        if not mixed:
            break
        str_ids = str_ids | mixed  # integer in some chunks only: strings, as the whole column reads
    _check_stamp(src.path, stamp, "during the first pass")
    report = readers.merge_reports(reports)
    user_ids, rows = users.result()
    item_ids, _ = items.result()
    return _Scan(src.path, src.spec, stamp, user_ids, item_ids, rows, report, str_ids, times, rates)


def _index(ids: np.ndarray, values: np.ndarray, path: Path) -> np.ndarray:
    """Indexes of ``values`` in the sorted ``ids`` (every value must be there)."""
    idx = np.searchsorted(ids, values)
    if len(values) and (idx.max() >= len(ids) or not np.array_equal(ids[idx], values)):
        raise DataError(f"{path}: changed while it was being read (ids the first pass did not see); it must not "
                        "change during a run")
    return idx


@dataclass
class _Local:
    train: Interactions
    valid: HoldOut | None
    test: HoldOut
    sums: dict[str, int] = field(default_factory=dict)  # added over ranks for the report


class _Rows:
    """Raw rows (index arrays by name) of some users, collected chunk by chunk."""

    def __init__(self, names: tuple[str, ...]):
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in names}

    def add(self, **arrays: np.ndarray | None) -> None:
        for k, v in arrays.items():
            if v is not None:
                self.parts[k].append(v)

    def get(self, key: str, dtype, shape: tuple = (0,)) -> np.ndarray:
        parts = self.parts[key]
        if len(parts) != 1:
            self.parts[key] = [np.concatenate(parts) if parts else np.empty(shape, dtype=dtype)]
        return self.parts[key][0]

    def keep(self, lo: int, hi: int, user_keys: dict[str, str]) -> None:
        """Only the rows whose user (array ``user_keys[group]`` of each group) is in ``lo:hi``."""
        for group, ukey in user_keys.items():
            u = self.get(ukey, np.int64)
            m = (u >= lo) & (u < hi)
            for k in [k for k in self.parts if k.split(".")[0] == group]:
                if self.parts[k]:
                    self.parts[k] = [self.get(k, np.int64)[m]]

    def extend(self, other: _Rows) -> None:
        for k, v in other.parts.items():
            self.parts[k].extend(v)


def _in_ranges(u: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(len(u), dtype=bool)
    for lo, hi in ranges:
        m |= (u >= lo) & (u < hi)
    return m


def collect_ratings(scan: _Scan, cfg: DataConfig, ranges: list[tuple[int, int]],
                    chunk_bytes: int = readers.CHUNK_BYTES) -> _Rows:
    """A streaming pass keeping the rows of the users in ``ranges`` (user indexes)."""
    _check_stamp(scan.path, scan.stamp, "between the passes")
    rows = _Rows(("r.u", "r.i", "r.t", "r.r"))
    seen = 0
    for r in _iter((scan.path, scan.spec), cfg, chunk_bytes, scan.str_ids):
        seen += len(r)
        if not len(r):
            continue
        u = _index(scan.user_ids, r.users, scan.path)
        keep = np.flatnonzero(_in_ranges(u, ranges))
        rows.add(**{"r.u": u[keep], "r.i": _index(scan.item_ids, r.items[keep], scan.path),
                    "r.t": None if r.timestamps is None else r.timestamps[keep],
                    "r.r": None if r.ratings is None else r.ratings[keep]})
    _check_stamp(scan.path, scan.stamp, "during a later pass")
    if seen != scan.report.rows:
        raise DataError(f"{scan.path}: changed while it was being read ({seen} rows on a later pass, "
                        f"{scan.report.rows} on the first); it must not change during a run")
    return rows


def _distinct_counts(u: np.ndarray, i: np.ndarray, n_items: int, lo: int, hi: int) -> np.ndarray:
    """Distinct items of each user ``lo:hi`` among rows ``(u, i)`` (repeated rows collapse)."""
    keys = np.unique(u * n_items + i)
    return np.bincount(keys // n_items - lo, minlength=hi - lo)[: hi - lo]


def split_ratings_rows(rows: _Rows, scan: _Scan, cfg: DataConfig, user_map: IdMap, item_map: IdMap,
                       lo: int, hi: int) -> _Local:
    full = Interactions.from_indices(rows.get("r.u", np.int64), rows.get("r.i", np.int64), user_map, item_map,
                                     rows.get("r.t", np.int64) if scan.timestamps else None,
                                     rows.get("r.r", np.float32) if scan.ratings else None)
    rows.parts.clear()  # the rows live on in full alone
    train, valid, test, stats = loo_split(full, cfg, np.random.default_rng(cfg.seed), lo, hi)
    sums = {"interactions": full.nnz, "duplicates_collapsed": full.n_duplicates, **stats,
            "valid": len(valid) if valid is not None else 0, "test": len(test)}
    return _Local(train, valid, test, sums)


def _loo_train_counts(rows: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Training interactions of users with ``rows`` distinct interactions after leave-one-out."""
    test = rows >= cfg.min_train + 1
    left = rows - test
    valid = (left >= cfg.min_train + 1) if cfg.valid else np.zeros_like(test)
    return left - valid


# -- the NCF pre-split layout ------------------------------------------------------------------

@dataclass
class _NcfScan:
    folder: Path
    paths: dict[str, Path]  # train, test, negative
    specs: dict[str, dict]
    stamps: dict[str, tuple[int, int]]
    n_users: int
    n_items: int
    rows: np.ndarray  # training rows of each user
    width: int  # negatives a row, the file's widest
    n_test: int
    n_lists: int
    reports: dict[str, readers.ReadReport]
    timestamps: bool
    ratings: bool


def _ncf_ints(r: readers.Ratings, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        return r.users.astype(np.int64), r.items.astype(np.int64)
    except ValueError:
        raise DataError(f"{path}: NCF files hold integer user and item indexes") from None


def scan_ncf(src: Source, cfg: DataConfig, chunk_bytes: int = readers.CHUNK_BYTES) -> _NcfScan:
    check_ncf_options(cfg)
    prefix = ncf_prefix(src.name, src.folder)
    paths = {k: src.folder / f"{prefix}.{k}" for k in ("train.rating", "test.rating", "test.negative")}
    stamps = {k: _stamp(p) for k, p in paths.items()}
    specs = {k: readers.ncf_rating_spec(paths[k]) for k in ("train.rating", "test.rating")}
    max_u = max_i = -1
    counts = np.zeros(0, dtype=np.int64)
    reports: dict[str, readers.ReadReport] = {}
    n_test = 0
    times = rates = False
    for k in ("train.rating", "test.rating"):
        chunks, mins = [], {"user": 0, "item": 0}
        for r in readers.iter_table(paths[k], **specs[k], on_bad_lines=cfg.on_bad_lines, chunk_bytes=chunk_bytes):
            chunks.append(r.report)
            u, i = _ncf_ints(r, paths[k])
            if not len(u):
                continue
            mins["user"], mins["item"] = min(mins["user"], int(u.min())), min(mins["item"], int(i.min()))
            if mins["user"] < 0 or mins["item"] < 0:
                continue  # said below, with the file's smallest index
            max_u, max_i = max(max_u, int(u.max())), max(max_i, int(i.max()))
            if k == "train.rating":
                times, rates = r.timestamps is not None, r.ratings is not None
                c = np.bincount(u)
                if len(c) > len(counts):
                    counts = np.concatenate([counts, np.zeros(len(c) - len(counts), dtype=np.int64)])
                counts[: len(c)] += c
            else:
                n_test += len(u)
        for what in ("user", "item"):
            if mins[what] < 0:
                raise DataError(f"{paths[k]}: {what} index {mins[what]} is negative (indexes start at 0)")
        reports[k] = readers.merge_reports(chunks)
    width, n_lists, max_neg = 0, 0, 0
    for nu, _ni, negs in readers.iter_ncf_negative(paths["test.negative"], chunk_bytes):
        n_lists += len(nu)
        max_u = max(max_u, int(nu.max(initial=-1)))
        max_neg = max(max_neg, int(negs.max(initial=0)))
        width = max(width, negs.shape[1])
    if not n_lists:
        raise DataError(f"{paths['test.negative']}: no candidate rows")
    for k, p in paths.items():
        _check_stamp(p, stamps[k], "during the first pass")
    n_users, n_items = max_u + 1, max(max_i, max_neg) + 1
    rows = np.zeros(n_users, dtype=np.int64)
    rows[: len(counts)] = counts
    return _NcfScan(src.folder, paths, specs, stamps, n_users, n_items, rows, width, n_test, n_lists,
                    reports, times, rates)


def collect_ncf(scan: _NcfScan, cfg: DataConfig, ranges: list[tuple[int, int]],
                chunk_bytes: int = readers.CHUNK_BYTES) -> _Rows:
    """A streaming pass over the three files keeping the users in ``ranges``."""
    for k, p in scan.paths.items():
        _check_stamp(p, scan.stamps[k], "between the passes")
    rows = _Rows(("tr.u", "tr.i", "tr.t", "tr.r", "te.u", "te.i", "ng.u", "ng.i", "ng.n"))
    for k, g in (("train.rating", "tr"), ("test.rating", "te")):
        for r in readers.iter_table(scan.paths[k], **scan.specs[k], on_bad_lines=cfg.on_bad_lines,
                                    chunk_bytes=chunk_bytes):
            u, i = _ncf_ints(r, scan.paths[k])
            keep = np.flatnonzero(_in_ranges(u, ranges))
            rows.add(**{f"{g}.u": u[keep], f"{g}.i": i[keep]})
            if g == "tr":
                rows.add(**{"tr.t": None if r.timestamps is None else r.timestamps[keep],
                            "tr.r": None if r.ratings is None else r.ratings[keep]})
    for nu, ni, negs in readers.iter_ncf_negative(scan.paths["test.negative"], chunk_bytes):
        keep = np.flatnonzero(_in_ranges(nu, ranges))
        padded = np.full((len(keep), scan.width), -1, dtype=np.int64)
        padded[:, : negs.shape[1]] = negs[keep]
        rows.add(**{"ng.u": nu[keep], "ng.i": ni[keep], "ng.n": padded})
    for k, p in scan.paths.items():
        _check_stamp(p, scan.stamps[k], "during a later pass")
    return rows


def split_ncf_rows(rows: _Rows, scan: _NcfScan, cfg: DataConfig, user_map: IdMap, item_map: IdMap,
                   lo: int, hi: int) -> _Local:
    te_u, te_i = rows.get("te.u", np.int64), rows.get("te.i", np.int64)
    nu, ni = rows.get("ng.u", np.int64), rows.get("ng.i", np.int64)
    negs = rows.get("ng.n", np.int64, (0, scan.width))
    neg_path, test_path = scan.paths["test.negative"], scan.paths["test.rating"]
    if sorted(zip(nu.tolist(), ni.tolist(), strict=True)) != sorted(zip(te_u.tolist(), te_i.tolist(), strict=True)):
        raise DataError(f"{neg_path}: its (user,item) heads do not match {test_path.name}")
    train_all = Interactions.from_indices(rows.get("tr.u", np.int64), rows.get("tr.i", np.int64), user_map, item_map,
                                          rows.get("tr.t", np.int64) if scan.timestamps else None,
                                          rows.get("tr.r", np.float32) if scan.ratings else None)
    rows.parts.clear()
    overlap = train_all.matrix[te_u, te_i].A1 if len(te_u) else np.array([])
    if overlap.any():
        raise DataError(f"{scan.folder}: test interactions of users {lo}..{hi - 1} also appear in the training "
                        "file; this would make evaluation incorrect")
    train, valid, test, stats, few_valid = ncf_split(train_all, te_u, te_i, nu, ni, negs, cfg, lo, hi)
    sums = {"interactions": train_all.nnz, "duplicates_collapsed": train_all.n_duplicates,
            **{f"candidates.{k}": v for k, v in stats.items()}, "users_without_valid": few_valid,
            "valid": len(valid) if valid is not None else 0, "test": len(test)}
    return _Local(train, valid, test, sums)


def _ncf_train_counts(rows: np.ndarray, cfg: DataConfig) -> np.ndarray:
    return rows - ((rows >= cfg.min_train + 1) if cfg.valid else 0)


# -- the driver ---------------------------------------------------------------------------------

def _alone(x: np.ndarray) -> np.ndarray:
    return x


def load_rank_dataset(cfg: DataConfig, rank: int = 0, world: int = 1, allsum: AllSum | None = None,
                      chunk_bytes: int = readers.CHUNK_BYTES) -> Dataset:
    """The users of ``rank`` (of ``world``) of ``cfg``'s dataset, as :class:`Dataset` with
    ``part`` set. ``allsum``: the sum over ranks of an int64 vector (every rank calls it twice,
    in the same order); None for one rank. Needs ``cfg.split_draws == "per_user"``."""
    if cfg.split_draws != "per_user":
        raise ConfigError("a rank reads only its users with per-user split draws (DataConfig.split_draws "
                          "'per_user'): the sequential stream needs every user")
    if cfg.layout == "adjacency":
        raise ConfigError("--shard-tables reads the file in chunks of rows: adjacency lists (--layout adjacency) "
                          "are not read that way; write the pairs one a line (user item)")
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside world size {world}")
    if allsum is None:
        if world != 1:
            raise ConfigError("several ranks need an all-reduce (allsum) to agree on the partition")
        allsum = _alone
    src = locate_source(cfg)
    if src.ncf:
        scan = scan_ncf(src, cfg, chunk_bytes)
        user_map, item_map = _ncf_maps(src.folder, scan.n_users, scan.n_items)
        est = _ncf_train_counts(scan.rows, cfg)
        users_of = {"tr": "tr.u", "te": "te.u", "ng": "ng.u"}

        def collect(ranges):
            return collect_ncf(scan, cfg, ranges, chunk_bytes)

        def exact(rows, lo, hi):
            return _ncf_train_counts(_distinct_counts(rows.get("tr.u", np.int64), rows.get("tr.i", np.int64),
                                                      scan.n_items, lo, hi), cfg)

        def split(rows, lo, hi):
            return split_ncf_rows(rows, scan, cfg, user_map, item_map, lo, hi)
    else:
        if cfg.split != "loo":
            raise ConfigError(f"a rank reads only its users for the loo split, not --split {cfg.split}")
        scan = scan_ratings(src, cfg, chunk_bytes)
        if scan.report.rows == 0:
            raise DataError(f"{cfg.source}: no interactions left to train on")
        user_map, item_map = IdMap(scan.user_ids), IdMap(scan.item_ids)
        est = _loo_train_counts(scan.rows, cfg)
        users_of = {"r": "r.u"}

        def collect(ranges):
            return collect_ratings(scan, cfg, ranges, chunk_bytes)

        def exact(rows, lo, hi):
            return _loo_train_counts(_distinct_counts(rows.get("r.u", np.int64), rows.get("r.i", np.int64),
                                                      len(item_map), lo, hi), cfg)

        def split(rows, lo, hi):
            return split_ratings_rows(rows, scan, cfg, user_map, item_map, lo, hi)
    n_users = len(user_map)
    # the row counts give a first partition; the exact training counts (repeated rows collapsed) the final one
    bounds = user_bounds(est, world)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    rows, error = _attempt(collect, [(lo, hi)])
    vec = np.zeros(n_users + 1, dtype=np.int64)
    if error is None:
        try:
            vec[lo:hi] = exact(rows, lo, hi)
        except (DataError, ConfigError) as e:
            error = e
    vec[n_users] = error is not None
    total = allsum(vec)
    _raise_if_failed(error, int(total[n_users]), cfg)
    counts = total[:n_users]
    final = user_bounds(counts, world)
    flo, fhi = int(final[rank]), int(final[rank + 1])
    local = None
    if (flo, fhi) != (lo, hi):  # the ranges moved: keep what stays, read what is new (a third pass)
        rows.keep(flo, fhi, users_of)
        gained = [(a, b) for a, b in ((flo, min(fhi, lo)), (max(flo, hi), fhi)) if a < b]
        if gained:
            more, error = _attempt(collect, gained)
            if error is None:
                rows.extend(more)
                del more
    if error is None:
        local, error = _attempt(lambda r: split(r, flo, fhi), rows)
    del rows
    keys = list(local.sums) if local is not None else []  # the same on every rank (the kind of source decides)
    tail = np.zeros(1 + _N_SUMS, dtype=np.int64)
    tail[0] = error is not None
    if local is not None:
        tail[1: 1 + len(keys)] = [int(local.sums[k]) for k in keys]
    tail = allsum(tail)
    _raise_if_failed(error, int(tail[0]), cfg)
    sums = dict(zip(keys, (int(x) for x in tail[1:]), strict=False))
    part = RankPart(rank, world, final, counts, int(counts.sum()), sums["valid"] if cfg.valid else None, sums["test"])
    if src.ncf:
        report = {
            "read": {"train": scan.reports["train.rating"].to_dict(), "test": scan.reports["test.rating"].to_dict()},
            "duplicates_collapsed": sums["duplicates_collapsed"],
            "candidates": {k.split(".", 1)[1]: v for k, v in sums.items() if k.startswith("candidates.")},
            "users_without_valid": sums["users_without_valid"],
            "timestamps": scan.timestamps,
            "split_sizes": {"train": sums["interactions"], "test": scan.n_test, "candidate_lists": scan.n_lists},
        }
        n_interactions = sums["interactions"] + scan.n_test
    else:
        report = {"read": scan.report.to_dict(), "duplicates_collapsed": sums["duplicates_collapsed"],
                  "users_without_test": sums["users_without_test"], "users_without_valid": sums["users_without_valid"],
                  "timestamps": scan.timestamps}
        n_interactions = sums["interactions"]
    return Dataset(src.name, local.train, local.test, local.valid, n_interactions, report,
                   _item_info(src.name, src.folder, item_map), cfg.to_dict(), part=part)


_N_SUMS = 12  # room for the report's sums (the NCF layout has 9)


def _attempt(fn, arg):
    """``(fn(arg), None)``, or ``(None, the data error)``: kept so that every rank reaches the
    all-reduce, where the error is raised on every rank."""
    try:
        return fn(arg), None
    except (DataError, ConfigError) as e:
        return None, e


def _raise_if_failed(error: Exception | None, failed: int, cfg: DataConfig) -> None:
    if error is not None:
        raise error
    if failed:
        raise DataError(f"{cfg.source}: {failed} other rank(s) could not read their users' rows (their error "
                        "says why)")
