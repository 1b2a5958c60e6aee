"""A given split: the user's own training and test files (and, optionally, validation file),
as the field's public benchmarks ship them (LightGCN's Gowalla: ``train.txt`` / ``test.txt``).

- The id maps come from the training file and the validation file. A held-out pair (test or
  validation) whose user or item the training file never saw cannot be scored by an id model:
  it is left out of its holdout, **counted** in ``Dataset.report`` and said in a warning line.
- A test pair that is also in the training (or validation) file is an error naming the count.
- Without a validation file, validation is carved from the training file alone: seeded, per
  user, ``valid_ratio`` of each user's items (the latest where the file has timestamps), by
  :func:`ncf.data.split.ratio_masks`; a user with a single item keeps it in training.
- The test file is read only by evaluation: the test holdout is a :class:`LazyHoldOut`, made
  on first use; loading, fitting (``Dataset.without_test``) and tuning never read it.

Holdouts have one row per held-out pair, each with ``n_neg_eval`` sampled candidates, drawn on
first use (:class:`DrawnHoldOut`: only the sampled protocol needs them; Gowalla's 217k test
rows take seconds) against everything the user is known to have (training, validation and test pairs; the
validation candidates against training and validation only, since the test file is unread).
Each draw has its own seeded stream, so the test holdout is the same with or without
validation (``ncf tune``'s refit on train + validation is tested on what the trials were).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ncf.data.interactions import IdMap, Interactions, _normalise_raw
from ncf.data.readers import Ratings
from ncf.data.split import (
    TEST_CANDIDATES,
    VALID_CANDIDATES,
    VALID_PICK,
    Dataset,
    DrawnHoldOut,
    HoldOut,
    LazyHoldOut,
    ratio_masks,
    sample_candidates,
)
from ncf.errors import DataError


def warn(lines: list[str]) -> None:
    from ncf.console import console

    for w in lines:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def _raw(values: np.ndarray) -> np.ndarray:
    return _normalise_raw(np.asarray(values))


def _concat_raw(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two raw id columns as one (strings where either is not all integers)."""
    if a.dtype.kind != b.dtype.kind:
        a, b = a.astype(str), b.astype(str)
    return _raw(np.concatenate([a, b]))


def lookup(idmap: IdMap, values: np.ndarray) -> np.ndarray:
    """Index of each raw id in ``idmap`` (-1 where absent), under the one id rule."""
    raw = np.asarray(idmap.raw_ids, dtype=object)
    values = _raw(values)
    if (values.dtype.kind == "i") != idmap.integer:  # "12" and 12 are the same id
        raw, values = raw.astype(str), values.astype(str)
    return pd.Index(raw).get_indexer(values).astype(np.int64)


def _pairs_matrix(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
    m.data[:] = 1
    return m


def _union(*ms: sp.csr_matrix) -> sp.csr_matrix:
    out = ms[0]
    for m in ms[1:]:
        out = out + m
    out = out.tocsr()
    out.data[:] = 1
    return out


def _unique_pairs(u: np.ndarray, i: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The distinct pairs, sorted by user then item, and how many repeats were collapsed."""
    key = np.unique(u * n_items + i)
    return key // n_items, key % n_items, len(u) - len(key)


def _overlap(train: sp.csr_matrix, u: np.ndarray, i: np.ndarray) -> int:
    return int(np.asarray(train[u, i]).ravel().astype(bool).sum()) if len(u) else 0


def held_out_pairs(r: Ratings, user_map: IdMap, item_map: IdMap, known_u: np.ndarray, known_i: np.ndarray,
                   what: str, label: str, train_label: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The pairs of ``r`` whose user and item the training file holds, as distinct sorted
    index pairs, and the counts of what was left out (warned, never silent)."""
    u, i = lookup(user_map, r.users), lookup(item_map, r.items)
    bad_u = (u < 0) | ~known_u[np.maximum(u, 0)]
    bad_i = (i < 0) | ~known_i[np.maximum(i, 0)]
    keep = ~(bad_u | bad_i)
    u, i, dups = _unique_pairs(u[keep], i[keep], len(item_map))
    stats = {"file": label, "pairs_read": len(r), "rows": len(u), "duplicates_collapsed": dups,
             "unseen_user_pairs": int(bad_u.sum()), "unseen_item_pairs": int((bad_i & ~bad_u).sum()),
             "unseen_pairs": int((~keep).sum())}
    if stats["unseen_pairs"]:
        warn([f"{label}: {stats['unseen_pairs']} of {len(r)} {what} pairs left out of the {what} holdout: "
              f"their user ({stats['unseen_user_pairs']} pairs) or item ({stats['unseen_item_pairs']} more) "
              f"is not in the training file {train_label}"])
    return u, i, stats


def given_split(cfg, name: str, train: Ratings, valid: Ratings | None, load_test: Callable[[], Ratings],
                test_label: str, train_label: str) -> Dataset:
    """A :class:`Dataset` of the given files (module docstring); ``load_test`` reads the test
    file, on the test holdout's first use."""
    user_map, cu = IdMap.from_values(_concat_raw(train.users, valid.users) if valid is not None else _raw(train.users))
    item_map, ci = IdMap.from_values(_concat_raw(train.items, valid.items) if valid is not None else _raw(train.items))
    n = len(train)
    tu, ti = cu[:n], ci[:n]
    shape = (len(user_map), len(item_map))
    train_all = Interactions.from_indices(tu, ti, user_map, item_map, train.timestamps, train.ratings)
    if train_all.nnz == 0:
        raise DataError(f"{train_label}: no interactions to train on")
    known_u = np.bincount(tu, minlength=shape[0]) > 0  # what the training file saw
    known_i = np.bincount(ti, minlength=shape[1]) > 0
    reads = {"train": train.report.to_dict()}
    valid_label = valid.report.path if valid is not None else None
    report = {"split": "given", "read": reads, "duplicates_collapsed": train_all.n_duplicates,
              "timestamps": train_all.timestamps is not None, "test_file": test_label,
              "split_sizes": {"train_file": int(train_all.nnz)}}
    given_valid = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if valid is not None:
        reads["valid"] = valid.report.to_dict()
        vu, vi, vstats = held_out_pairs(valid, user_map, item_map, known_u, known_i, "validation", valid_label,
                                        train_label)
        both = _overlap(train_all.matrix, vu, vi)
        if both:
            raise DataError(f"{valid_label}: {both} validation pairs also appear in the training file "
                            f"{train_label}; this would make validation incorrect")
        given_valid = vu, vi
        report["valid"] = {"source": "file", **vstats}
        report["split_sizes"]["valid_file"] = len(vu)
        if cfg.valid:
            train_set = train_all
        else:  # no validation holdout: the validation file's pairs are training pairs (all of them)
            train_set = Interactions.from_indices(cu, ci, user_map, item_map)
            train_set.n_duplicates = train_all.n_duplicates
            vu = vi = None
    elif cfg.valid:
        train_set, vu, vi, carved = carve_valid(train_all, cfg)
        report["valid"] = carved
    else:
        train_set, vu = train_all, None
    valid_h = None
    if vu is not None:
        seen = _union(train_all.matrix, _pairs_matrix(*given_valid, shape))
        rng = np.random.default_rng([cfg.seed, VALID_CANDIDATES])
        valid_h = DrawnHoldOut(vu, vi, lambda: sample_candidates(seen, vu, vi, cfg.n_neg_eval, rng))
    report["train"] = int(train_set.nnz)

    def load() -> HoldOut:
        try:
            r = load_test()
        except DataError as e:
            raise DataError(f"the test holdout cannot be read: {e}") from None
        warn(r.report.warnings)
        reads["test"] = r.report.to_dict()
        u, i, stats = held_out_pairs(r, user_map, item_map, known_u, known_i, "test", test_label, train_label)
        for where, m in (("training file " + train_label, train_all.matrix),
                         (f"validation file {valid_label}", _pairs_matrix(*given_valid, shape))):
            both = _overlap(m, u, i)
            if both:
                raise DataError(f"{test_label}: {both} test pairs also appear in the {where}; this would make "
                                "evaluation incorrect")
        if not len(u):
            raise DataError(f"{test_label}: no test pair left to evaluate ({stats['pairs_read']} read, "
                            f"{stats['unseen_pairs']} with a user or item the training file does not hold)")
        seen = _union(train_all.matrix, _pairs_matrix(*given_valid, shape), _pairs_matrix(u, i, shape))
        rng = np.random.default_rng([cfg.seed, TEST_CANDIDATES])
        report["test"] = stats
        return DrawnHoldOut(u, i, lambda: sample_candidates(seen, u, i, cfg.n_neg_eval, rng))

    test = LazyHoldOut(load, f"test pairs of {test_label}")
    n_all = int(train_all.nnz + len(given_valid[0]))
    return Dataset(name, train_set, test, valid_h, n_all, report, None, cfg.to_dict())


def carve_valid(train_all: Interactions, cfg) -> tuple[Interactions, np.ndarray, np.ndarray, dict]:
    """Validation carved from the training file: ``cfg.valid_ratio`` of each user's items
    (at least one where the user has two or more; the latest where there are timestamps;
    else drawn, seeded). Returns (training, valid users, valid items, report)."""
    rng = np.random.default_rng([cfg.seed, VALID_PICK])
    by_time = train_all.timestamps is not None
    r = cfg.valid_ratio
    _, carved = ratio_masks(train_all, rng, (1.0 - r, 0.0, r), by_time=by_time, valid=False)
    users, items = train_all.coo()
    keep = ~carved
    train = Interactions.from_indices(
        users[keep], items[keep], train_all.user_map, train_all.item_map,
        None if train_all.timestamps is None else train_all.timestamps[keep],
        None if train_all.ratings is None else train_all.ratings[keep], meta=train_all.meta)
    train.n_duplicates = train_all.n_duplicates
    counts = train_all.user_counts()
    report = {"source": "carved", "valid_ratio": r, "by": "time" if by_time else "random", "rows": int(carved.sum()),
              "users": int(len(np.unique(users[carved]))), "users_kept_whole": int(((counts > 0) & (counts < 2)).sum())}
    return train, users[carved], items[carved], report


def read_given(path: str | Path, cfg, what: str) -> Ratings:
    """One file of a given split (``what``: ``--test`` / ``--valid``), read as the training file is."""
    from ncf.data.datasets import file_spec, read_path

    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path}: no such file")
    if path.is_dir():
        raise DataError(f"{what} {path}: a folder, not a file of (user, item) pairs")
    return read_path(path, file_spec(cfg), cfg)


def load_given(cfg, name: str, train: Ratings, train_path: Path) -> Dataset:
    """The given split of ``cfg`` (``source`` the training file, already read as ``train``)."""
    valid = read_given(cfg.valid_file, cfg, "--valid") if cfg.valid_file is not None else None
    if valid is not None:
        warn(valid.report.warnings)
    test_path = Path(cfg.test_file)
    if not test_path.is_file():  # said now, without reading it
        raise DataError(f"--test {test_path}: no such file")
    return given_split(cfg, name, train, valid, lambda: read_given(test_path, cfg, "--test"), str(test_path),
                       str(train_path))
