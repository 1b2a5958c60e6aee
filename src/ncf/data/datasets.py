"""Dataset registry: a name (``ml-100k``, ``ncf-ml-1m``, ...) or a file path -> :class:`Dataset`.

Data directory: the ``data_dir`` argument, else ``$NCF_DATA_DIR``, else ``~/.cache/ncf``.
A named dataset lives in ``DATA_DIR/NAME/`` with the files of its GroupLens archive.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ncf.data import readers
from ncf.data.download import data_dir  # noqa: F401 (where datasets live; re-exported)
from ncf.data.interactions import IdMap, Interactions
from ncf.data.readers import DataError, Ratings
from ncf.data.split import (
    SPLITS,
    TEST_CANDIDATES,
    TEST_PICK,
    VALID_CANDIDATES,
    VALID_PICK,
    Dataset,
    HoldOut,
    UserDraws,
    candidates_from_lists,
    leave_one_out,
    negatives_missing,
    sample_candidates,
    split_multi,
)
from ncf.errors import ConfigError

# name -> (ratings file inside DATA_DIR/NAME, reader)
RATINGS_FILES = {
    "ml-100k": ("u.data", readers.read_ml100k),
    "ml-1m": ("ratings.dat", readers.read_ml1m),
    "ml-10m": ("ratings.dat", readers.read_ml1m),
    "ml-20m": ("ratings.csv", readers.read_ml_csv),
    "ml-25m": ("ratings.csv", readers.read_ml_csv),
    "ml-latest-small": ("ratings.csv", readers.read_ml_csv),
    "ml-latest": ("ratings.csv", readers.read_ml_csv),
}
NCF_NAMES = {"ncf-ml-1m": "ml-1m"}  # name -> file prefix in DATA_DIR/NAME
DATASETS = sorted([*RATINGS_FILES, *NCF_NAMES])



@dataclass
class DataConfig:
    """How a source becomes a split :class:`Dataset`. Saved with every run."""

    source: str = "ml-100k"
    data_dir: str | None = None
    valid: bool = True  # carve a validation holdout from training
    n_neg_eval: int = 99
    seed: int = 0
    min_rating: float | None = None
    min_train: int = 1  # users need min_train + 1 interactions to get a holdout
    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    time_col: str | None = None
    sep: str | None = None
    header: bool | None = None  # the file's first row is a header (None: detected)
    on_bad_lines: str = "error"
    # how test and validation are held out: "loo" (each user's latest interaction, the NCF
    # protocol), "temporal" (the globally latest 10% / the 10% before), "ratio" / "ratio-time"
    # (8:1:1 of each user's interactions, at random / the latest); several held-out items a user
    split: str = "loo"
    # where the split's random choices come from (ncf.data.split): "sequential" (one seeded stream
    # over all users, the default) or "per_user" (a hash of seed and user: what each rank of a
    # --shard-tables run draws for its own users alone; loo only)
    split_draws: str = "sequential"
    # a given split (split "given"): ``source`` is the training file, ``test_file`` the test
    # pairs (read only by evaluation), ``valid_file`` the validation pairs (else carved from the
    # training file: ``valid_ratio`` of each user's items, seeded)
    test_file: str | None = None
    valid_file: str | None = None
    layout: str | None = None  # None: detected; "adjacency": lines of `user item item ...`; "table": columns
    valid_ratio: float = 0.1

    def __post_init__(self):
        if self.test_file is not None and self.split == "loo":
            self.split = "given"  # a test file is the split
        if self.split == "none":
            self.valid = False  # nothing is held out, validation neither
        self.source, self.test_file, self.valid_file = (_absolute(p) for p in (self.source, self.test_file,
                                                                                self.valid_file))
        if self.n_neg_eval < 1:
            raise ConfigError(f"n_neg_eval must be >= 1, got {self.n_neg_eval}")
        if self.on_bad_lines not in readers.BAD_LINES:
            raise ConfigError(f"--on-bad-lines must be 'error' or 'skip', not {self.on_bad_lines!r}")
        if self.min_train < 1:
            raise ConfigError(f"min_train must be >= 1, got {self.min_train}")
        if self.split not in DATA_SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(DATA_SPLITS)}, got {self.split!r}")
        self._check_given()
        if self.split_draws not in SPLIT_DRAWS:
            raise ConfigError(f"split_draws must be one of {', '.join(SPLIT_DRAWS)}, got {self.split_draws!r}")
        if self.split_draws == "per_user" and self.split != "loo":
            raise ConfigError(f"split_draws 'per_user' applies to the loo split, not --split {self.split}")

    def _check_given(self) -> None:
        """The given-split options agree with each other and with ``split``."""
        if self.split == "given" and self.test_file is None:
            raise ConfigError("--split given needs a test file (--test FILE)")
        if self.test_file is not None and self.split != "given":
            raise ConfigError(f"--split {self.split}: a given test file (--test) is the split; "
                              + ("--split none trains on everything: drop --test" if self.split == "none"
                                 else "drop --split"))
        if self.valid_file is not None and self.test_file is None:
            raise ConfigError("--valid FILE applies to a given split: pass --train FILE --test FILE with it")
        if not 0 < self.valid_ratio < 1:
            raise ConfigError(f"--valid-ratio must be in (0, 1), got {self.valid_ratio} (no validation: --no-valid)")
        if self.valid_ratio != 0.1 and (self.split != "given" or self.valid_file is not None):
            raise ConfigError("--valid-ratio applies to a given split (--train/--test) without --valid FILE")
        if self.layout not in (None, *readers.LAYOUTS):
            raise ConfigError(f"--layout must be {' or '.join(readers.LAYOUTS)} (default: detected), "
                              f"got {self.layout!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, default in (("split", "loo"), ("split_draws", "sequential"), ("test_file", None),
                             ("valid_file", None), ("layout", None), ("valid_ratio", 0.1)):
            if d[key] == default:  # defaults are left out: run configs written before the options match
                del d[key]
        return d

    def draws(self, stream: int, rng: np.random.Generator) -> np.random.Generator | UserDraws:
        """What the split draws ``stream``'s choices from: ``rng`` (sequential) or per user."""
        return rng if self.split_draws == "sequential" else UserDraws(self.seed, stream)


SPLIT_DRAWS = ("sequential", "per_user")
# a DataConfig's splits: ncf's own (ncf.data.split.SPLITS), a given test file, or no holdout at all
DATA_SPLITS = (*SPLITS, "given", "none")


def _absolute(path: str | None) -> str | None:
    """An existing file or folder as an absolute path (a run evaluated from another directory
    finds it); a dataset name, an in-memory source or a missing path as given."""
    if path is None or path == IN_MEMORY or path in DATASETS:
        return path
    p = Path(path).expanduser()
    return os.path.abspath(p) if p.exists() else path


def _col(c: str | None):
    if c is None:
        return None
    return int(c) if c.isdigit() else c


def dataset_path(name: str, root: Path) -> Path:
    return root / name


def ensure_available(name: str, root: Path, download: bool = True) -> Path:
    """The directory of a named dataset, downloading it if missing (where possible)."""
    folder = dataset_path(name, root)
    if name in NCF_NAMES:
        prefix = NCF_NAMES[name]
        needed = [f"{prefix}.train.rating", f"{prefix}.test.rating", f"{prefix}.test.negative"]
        missing = [f for f in needed if not (folder / f).exists()]
        if missing:
            raise DataError(
                f"dataset {name!r} is not in {folder}: put {', '.join(missing)} there (the NCF "
                f"authors' pre-split files, from the Data/ folder of github.com/hexiangnan/"
                f"neural_collaborative_filtering; it is not downloaded automatically), or pass "
                f"--data-dir / set NCF_DATA_DIR to a folder holding {name}/"
            )
        return folder
    fname, _ = RATINGS_FILES[name]
    if (folder / fname).exists():
        return folder
    from ncf.data.download import DownloadError, archive_url
    from ncf.data.download import download as fetch

    where = (
        f"put {fname} (from {archive_url(name)}, unpacked) at {folder / fname}, "
        f"or pass --data-dir / set NCF_DATA_DIR to a folder holding {name}/{fname}, "
        f"or download from a mirror: set NCF_DOWNLOAD_URL (or `ncf data download {name} --url BASE`) "
        f"to a server holding {name}.zip and its MD5 as {name}.zip.md5"
    )
    if download:
        from ncf.console import console

        console.print(f"dataset {name!r} is not in {folder}: downloading it from {archive_url(name)}")
        try:
            fetch(name, root)
        except DownloadError as e:
            raise DataError(
                f"dataset {name!r} is missing and could not be downloaded ({e}); offline: {where}"
            ) from None
        if (folder / fname).exists():
            console.print(f"dataset {name!r} downloaded into {folder}")
            return folder
    raise DataError(f"dataset {name!r} is missing: run `ncf data download {name}`, or {where}")


IN_MEMORY = "<DataFrame>"  # the source of a dataset made by ncf.from_pandas


@dataclass
class Source:
    """Where a :class:`DataConfig`'s data is: a ratings file read by :func:`readers.read_table`
    with ``spec`` (its columns, separator, header), or the NCF pre-split layout (``spec`` None:
    ``folder`` holds ``PREFIX.train.rating``, ``.test.rating``, ``.test.negative``)."""

    name: str
    folder: Path
    path: Path | None = None
    spec: dict | None = None

    @property
    def ncf(self) -> bool:
        return self.spec is None


def locate_source(cfg: DataConfig) -> Source:
    """Resolve a source (a dataset name, a folder, a file) without reading its rows."""
    src = cfg.source
    if src == IN_MEMORY:
        raise DataError("this run was fit on an in-memory DataFrame (ncf.from_pandas): there is no file to "
                        "re-read; evaluate it from Python with ncf.evaluate(ncf.load(DIR), data)")
    root = data_dir(cfg.data_dir)
    layout = [f"--{k.replace('_', '-')}" for k in ("user_col", "item_col", "rating_col", "time_col", "sep", "header")
              if getattr(cfg, k) is not None]
    if layout and cfg.layout == "adjacency":
        raise DataError(f"{', '.join(layout)}: --layout adjacency reads lines of `user item item ...`, "
                        "which have no columns to name")
    if cfg.layout is not None:
        layout.append("--layout")
    if layout and src in DATASETS:
        raise DataError(f"{', '.join(layout)}: column options apply to a file path; {src!r} is a named "
                        "dataset whose layout is known")
    if src in NCF_NAMES:
        return Source(src, ensure_available(src, root))
    if src in RATINGS_FILES:
        folder = ensure_available(src, root)
        fname, reader = RATINGS_FILES[src]
        return Source(src, folder, folder / fname, readers.FORMATS[reader])
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown source {src!r}: not a dataset name ({', '.join(DATASETS)}) nor an existing file"
        )
    if path.is_dir():
        if layout:
            raise DataError(f"{', '.join(layout)}: column options apply to a file path; {path} is a folder")
        for name, (fname, reader) in RATINGS_FILES.items():
            if (path / fname).exists():
                return Source(name, path, path / fname, readers.FORMATS[reader])
        if list(path.glob("*.train.rating")):
            return Source(str(path), path)
        raise DataError(f"{path}: no known ratings file (u.data, ratings.dat, ratings.csv, *.train.rating)")
    if cfg.test_file is not None and path.is_dir():
        raise DataError(f"--train {path}: a folder; the training file of a given split is one file")
    if path.name.endswith(".train.rating") and not layout and cfg.test_file is None:
        return Source(str(path), path.parent)
    if not layout:
        for name, (fname, reader) in RATINGS_FILES.items():
            if path.name == fname:
                return Source(name if cfg.test_file is None else str(path), path.parent, path,
                              readers.FORMATS[reader])
    return Source(str(path), path.parent, path, file_spec(cfg))


def file_spec(cfg: DataConfig) -> dict:
    """The :func:`readers.read_table` columns of a file read with ``cfg``'s column options."""
    return {
        "user_col": _col(cfg.user_col),  # None: by a header's names when no column is given, else 0 (item 1)
        "item_col": _col(cfg.item_col),
        "rating_col": _col(cfg.rating_col),
        "time_col": _col(cfg.time_col),
        "sep": cfg.sep,
        "header": cfg.header,
    }


def read_path(path: Path, spec: dict, cfg: DataConfig) -> Ratings:
    """One file of ``cfg``'s data: a table read with ``spec``, or adjacency lists (``cfg.layout``,
    else detected where no column option was given)."""
    plain = all(getattr(cfg, k) is None for k in ("user_col", "item_col", "rating_col", "time_col", "sep", "header"))
    return readers.read_file(path, cfg.layout, cfg.on_bad_lines, cfg.min_rating, detect=plain, **spec)


def read_source(cfg: DataConfig) -> tuple[str, Ratings | None, Path]:
    """Resolve a source to (name, ratings-or-None-for-NCF-presplit, folder)."""
    src = locate_source(cfg)
    if src.ncf:
        return src.name, None, src.folder
    if src.name in DATASETS:  # a named dataset: its known layout
        ratings = readers.read_table(src.path, **src.spec, on_bad_lines=cfg.on_bad_lines, min_rating=cfg.min_rating)
    else:
        ratings = read_path(src.path, src.spec, cfg)
    return src.name, ratings, src.folder


def load_dataset(cfg: DataConfig | str) -> Dataset:
    if isinstance(cfg, str):
        cfg = DataConfig(source=cfg)
    name, ratings, folder = read_source(cfg)
    if ratings is None:
        return _load_ncf(cfg, name, folder)
    if ratings.report.warnings:
        from ncf.console import console

        for w in ratings.report.warnings:  # also kept in the run's dataset_report
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if cfg.split == "given":
        from ncf.data.given import load_given

        ds = load_given(cfg, name, ratings, Path(cfg.source))
    else:
        ds = split_ratings(ratings, cfg, name)
    ds.item_info = _item_info(name, folder, ds.train.item_map)
    return ds


def no_holdout(cfg: DataConfig, name: str, full: Interactions, report: dict) -> Dataset:
    """``--split none``: every interaction is training; no validation, no test (deployment)."""
    report = {**report, "split": "none", "train": int(full.nnz)}
    return Dataset(name, full, None, None, int(full.nnz), report, None, cfg.to_dict())


def columns_hint(columns: dict) -> str:
    """Which columns of the file were read as user and item (``ReadReport.columns``), for an error
    where no user repeats: wrong columns make every user look new."""
    if "user" not in columns:
        return ""
    return (f"; users read from {columns['user']}, items from {columns.get('item', '?')}: if those are the wrong "
            "columns, pass --user-col and --item-col")


def split_ratings(ratings: Ratings, cfg: DataConfig, name: str) -> Dataset:
    """Raw interactions -> a split :class:`Dataset`: leave-one-out by time for test, then for
    validation (``cfg.valid``), each holdout with ``cfg.n_neg_eval`` sampled negatives."""
    rng = np.random.default_rng(cfg.seed)
    full = Interactions.from_raw(ratings.users, ratings.items, ratings.timestamps, ratings.ratings)
    if full.nnz == 0:
        raise DataError(f"{cfg.source}: no interactions left to train on")
    if cfg.split == "none":
        return no_holdout(cfg, name, full, {"read": ratings.report.to_dict(), "duplicates_collapsed": full.n_duplicates,
                                             "timestamps": full.timestamps is not None})
    if cfg.split != "loo":
        return _load_multi(cfg, name, full, ratings, rng)
    train, valid, test, stats = loo_split(full, cfg, rng)
    if not len(test):
        raise DataError(f"{cfg.source}: no test item can be held out: no user has min_train + 1 = {cfg.min_train + 1} "
                        f"or more interactions ({full.n_users} users, {full.nnz} interactions"
                        f"{columns_hint(ratings.report.columns)}); to train on everything with no holdout pass "
                        "holdout=None (Python) / --split none (CLI)")
    report = {
        "read": ratings.report.to_dict(),
        "duplicates_collapsed": full.n_duplicates,
        **stats,
        "timestamps": full.timestamps is not None,
    }
    return Dataset(name, train, test, valid, full.nnz, report, None, cfg.to_dict())


def loo_split(full: Interactions, cfg: DataConfig, rng: np.random.Generator, first_user: int = 0,
              end_user: int | None = None):
    """Leave-one-out by time for test, then for validation (``cfg.valid``), each holdout with
    ``cfg.n_neg_eval`` sampled candidates: ``(train, valid, test, stats)``. ``first_user`` /
    ``end_user``: ``full`` holds the interactions of these users only (one rank's; per-user
    draws), and candidates are drawn against their rows alone."""
    end_user = full.n_users if end_user is None else end_user
    train, test_u, test_i, few_test = leave_one_out(full, cfg.draws(TEST_PICK, rng), cfg.min_train)
    seen_all = full.matrix[first_user:end_user] if (first_user, end_user) != (0, full.n_users) else full.matrix
    # drawn with or without a validation holdout, so that the test holdout (its sampled candidates)
    # is the same either way: a --no-valid run, or ncf tune's refit on train + validation, is
    # tested on what the validated runs are
    train_v, val_u, val_i, few_valid = leave_one_out(train, cfg.draws(VALID_PICK, rng), cfg.min_train)
    valid = HoldOut(val_u, val_i, sample_candidates(seen_all, val_u, val_i, cfg.n_neg_eval,
                                                    cfg.draws(VALID_CANDIDATES, rng), first_user))
    if cfg.valid:
        train = train_v
    else:
        valid, few_valid = None, 0
    test = HoldOut(test_u, test_i, sample_candidates(seen_all, test_u, test_i, cfg.n_neg_eval,
                                                     cfg.draws(TEST_CANDIDATES, rng), first_user))
    return train, valid, test, {"users_without_test": few_test, "users_without_valid": few_valid}


def _load_multi(cfg: DataConfig, name: str, full: Interactions, ratings: Ratings,
                rng: np.random.Generator) -> Dataset:
    """A split with several held-out items per user (``cfg.split``): one holdout row per
    held-out interaction, each with its own ``n_neg_eval`` sampled candidates."""
    train, (vu, vi), (tu, ti), report = split_multi(full, cfg.split, rng, valid=cfg.valid)
    if not len(tu):
        raise DataError(f"{cfg.source}: --split {cfg.split} leaves no test interaction")
    seen_all = full.matrix
    # drawn with or without a validation holdout, so that the test candidates are the same either way
    valid = HoldOut(vu, vi, sample_candidates(seen_all, vu, vi, cfg.n_neg_eval, rng))
    valid = valid if cfg.valid else None
    test = HoldOut(tu, ti, sample_candidates(seen_all, tu, ti, cfg.n_neg_eval, rng))
    report = {"read": ratings.report.to_dict(), "duplicates_collapsed": full.n_duplicates,
              "timestamps": full.timestamps is not None, **report}
    return Dataset(name, train, test, valid, full.nnz, report, None, cfg.to_dict())  # item_info: load_dataset


def check_ncf_options(cfg: DataConfig) -> None:
    if cfg.min_rating is not None:
        raise DataError(f"--min-rating: {cfg.source!r} is pre-split (NCF layout) and its training file has no ratings")
    if cfg.split not in ("loo", "none"):
        raise DataError(f"--split {cfg.split}: {cfg.source!r} is pre-split (NCF layout: one test item a user)")


def ncf_prefix(name: str, folder: Path) -> str:
    """The file prefix of the NCF layout ``name`` in ``folder`` (``ml-1m`` for ``ml-1m.train.rating``)."""
    prefix = NCF_NAMES.get(name)
    if prefix is None and name.endswith(".train.rating"):
        prefix = Path(name).name[: -len(".train.rating")]
    elif prefix is None:
        found = sorted(folder.glob("*.train.rating"))
        if len(found) > 1:
            raise DataError(f"{folder}: several NCF training files ({', '.join(f.name for f in found)}); "
                            "pass the one to use")
        prefix = found[0].name[: -len(".train.rating")]
    return prefix


def _load_ncf(cfg: DataConfig, name: str, folder: Path) -> Dataset:
    """The NCF pre-split layout: ``PREFIX.train.rating``, ``.test.rating``, ``.test.negative``."""
    check_ncf_options(cfg)
    prefix = ncf_prefix(name, folder)
    kw = {"on_bad_lines": cfg.on_bad_lines}
    tr = readers.read_ncf_rating(folder / f"{prefix}.train.rating", **kw)
    te = readers.read_ncf_rating(folder / f"{prefix}.test.rating", **kw)
    neg_path = folder / f"{prefix}.test.negative"
    nu, ni, negs = readers.read_ncf_negative(neg_path)
    as_int = {}
    for label, arr, path in (("train", tr, f"{prefix}.train.rating"), ("test", te, f"{prefix}.test.rating")):
        try:
            as_int[label] = (arr.users.astype(np.int64), arr.items.astype(np.int64))
        except ValueError:
            raise DataError(f"{folder / path}: NCF files hold integer user and item indexes") from None
        for what, values in zip(("user", "item"), as_int[label], strict=True):
            if len(values) and values.min() < 0:
                raise DataError(f"{folder / path}: {what} index {int(values.min())} is negative (indexes start at 0)")
    tr_u, tr_i = as_int["train"]
    te_u, te_i = as_int["test"]
    n_users = int(max(tr_u.max(), te_u.max(), nu.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max(), negs.max(initial=0))) + 1
    user_map, item_map = _ncf_maps(folder, n_users, n_items)
    if sorted(zip(nu.tolist(), ni.tolist(), strict=True)) != sorted(zip(te_u.tolist(), te_i.tolist(), strict=True)):
        raise DataError(f"{neg_path}: its (user,item) heads do not match {prefix}.test.rating")
    if cfg.split == "none":  # everything trains: the training and the test file's pairs
        times = (None if tr.timestamps is None or te.timestamps is None
                 else np.concatenate([tr.timestamps, te.timestamps]))
        full = Interactions.from_indices(np.concatenate([tr_u, te_u]), np.concatenate([tr_i, te_i]), user_map,
                                         item_map, times)
        report = {"read": {"train": tr.report.to_dict(), "test": te.report.to_dict()},
                  "duplicates_collapsed": full.n_duplicates, "timestamps": times is not None}
        ds = no_holdout(cfg, name, full, report)
        ds.item_info = _item_info(name, folder, item_map)
        return ds
    train_all = Interactions.from_indices(tr_u, tr_i, user_map, item_map, tr.timestamps, tr.ratings)
    overlap = train_all.matrix[te_u, te_i].A1 if len(te_u) else np.array([])
    if overlap.any():
        raise DataError(
            f"{folder}: {int(overlap.sum())} test interactions also appear in the training file; "
            "this would make evaluation incorrect"
        )
    train, valid, test, stats, few_valid = ncf_split(train_all, te_u, te_i, nu, ni, negs, cfg)
    empty = negatives_missing(test)
    if empty == len(test):
        raise DataError(f"{neg_path}: no candidate list holds a negative item (after removing repeats, the "
                        "held-out item and items the user has seen): the sampled protocol would rank each "
                        "held-out item alone (HR@10 = 1); put each user's negatives after its (user,item)")
    if empty:
        stats["rows_without_negatives"] = empty
        from ncf.console import console

        console.print(f"[yellow]warning:[/yellow] {neg_path}: {empty} of {len(test)} candidate lists hold no "
                      "negative item left: the sampled protocol ranks their held-out item alone", highlight=False)
    report = {
        "read": {"train": tr.report.to_dict(), "test": te.report.to_dict()},
        "duplicates_collapsed": train_all.n_duplicates,
        "candidates": stats,
        "users_without_valid": few_valid,
        "timestamps": train_all.timestamps is not None,
        "split_sizes": {"train": int(train_all.nnz), "test": int(len(te_u)), "candidate_lists": int(len(nu))},
    }
    return Dataset(name, train, test, valid, int(train_all.nnz + len(te_u)), report,
                   _item_info(name, folder, item_map), cfg.to_dict())


def ncf_split(train_all: Interactions, te_u: np.ndarray, te_i: np.ndarray, nu: np.ndarray, ni: np.ndarray,
              negs: np.ndarray, cfg: DataConfig, first_user: int = 0, end_user: int | None = None):
    """The NCF layout's holdouts: test from the given files (candidates: the given negatives
    less repeats and seen items), validation by leave-one-out from training (``cfg.valid``).
    ``first_user`` / ``end_user``: as :func:`loo_split`."""
    end_user = train_all.n_users if end_user is None else end_user
    rng = np.random.default_rng(cfg.seed)
    seen_all = (train_all.matrix + sp.csr_matrix(
        (np.ones(len(te_u), np.float32), (te_u, te_i)), shape=train_all.matrix.shape)).tocsr()
    seen_all.data[:] = 1
    local = seen_all[first_user:end_user] if (first_user, end_user) != (0, train_all.n_users) else seen_all
    cand, stats = candidates_from_lists(nu - first_user, ni, negs, train_all.n_items, seen=local)
    test = HoldOut(nu, ni, cand)
    valid, few_valid, train = None, 0, train_all
    if cfg.valid:
        train, val_u, val_i, few_valid = leave_one_out(train_all, cfg.draws(VALID_PICK, rng), cfg.min_train)
        valid = HoldOut(val_u, val_i, sample_candidates(local, val_u, val_i, cfg.n_neg_eval,
                                                        cfg.draws(VALID_CANDIDATES, rng), first_user))
    return train, valid, test, stats, few_valid


def _ncf_maps(folder: Path, n_users: int, n_items: int) -> tuple[IdMap, IdMap]:
    """Raw ids for the NCF layout: MovieLens ids where ``item_ids.tsv`` (index -> MovieID)
    is present (and then UserID = index + 1, as ML-1M's users.dat), else the indexes."""
    ids_file = folder / "item_ids.tsv"
    if not ids_file.exists():
        return IdMap(list(range(n_users))), IdMap(list(range(n_items)))
    r = readers.read_table(ids_file, 0, 1, sep="\t", header=False)
    idx, raw = r.users.astype(np.int64), r.items.astype(np.int64)
    if len(idx) != n_items or not np.array_equal(np.sort(idx), np.arange(n_items)):
        raise DataError(f"{ids_file}: expected one line for each item index 0..{n_items - 1}")
    raws = np.empty(n_items, dtype=np.int64)
    raws[idx] = raw
    return IdMap(list(range(1, n_users + 1))), IdMap(raws.tolist())


def _item_info(name: str, folder: Path, item_map: IdMap) -> dict | None:
    """Titles and genres by item index, where the source folder has them."""
    from ncf.data.features import read_item_titles

    try:
        table = read_item_titles(folder)
    except DataError:
        return None
    if table is None:
        return None
    titles, genres = [], []
    for raw in item_map.raw_ids:
        row = table.get(raw) or table.get(str(raw))
        titles.append(row[0] if row else None)
        genres.append(row[1] if row else [])
    return {"titles": titles, "genres": genres}
