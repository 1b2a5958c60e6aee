"""The Python front door: data in, a fitted model out, recommendations as DataFrames.

    import ncf
    data = ncf.load_dataset("ml-100k")                      # or ncf.from_pandas(df, user=..., item=...)
    model = ncf.fit("neumf", data, epochs=20, factors=8)     # any registry name + its options
    model.recommend([1, 2, 3], k=10)                          # DataFrame user, rank, item, score, ...
    model.similar_items([50], k=10)                           # DataFrame item, rank, similar, score, ...
    ncf.evaluate(model, data, protocol="full")                # {"hr@10": ..., "ndcg@10": ...}
    model.save("runs/x"); ncf.load("runs/x")                  # the run directory the CLI writes

Fitting never reads the test holdout (it gets ``data.without_test()``); ``evaluate`` does.
Recommendations go through :class:`ncf.recommend.Recommender`, as for every other client.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ncf.checkpoint import CheckpointError, atomic_write_json, load_config, read_json, save_model
from ncf.config import TrainConfig
from ncf.console import quiet
from ncf.data.datasets import IN_MEMORY, DataConfig, split_ratings
from ncf.data.datasets import load_dataset as _load
from ncf.data.readers import DataError, Ratings, read_frame
from ncf.data.split import Dataset
from ncf.errors import ConfigError
from ncf.recommend import Recommender


def _split_option(holdout, options: dict) -> dict:
    """``holdout=None``: no holdout at all (split "none"); ``"auto"``: the source's own split."""
    if holdout is None:
        if options.get("split") not in (None, "none"):
            raise ConfigError(f"holdout=None holds nothing out; split={options['split']!r} holds out a test set")
        return {**options, "split": "none", "valid": False}
    if holdout != "auto":
        raise ConfigError(f"holdout takes None (no holdout: train on everything), not {holdout!r}; "
                          "choose how test is held out with split=... (loo, temporal, ratio, ratio-time)")
    return options


def load_dataset(source: str | Path | None = None, *, train: str | Path | None = None,
                 test: str | Path | None = None, valid: str | Path | bool | None = None, layout: str | None = None,
                 valid_ratio: float = 0.1, holdout: str | None = "auto", data_dir: str | Path | None = None,
                 **options) -> Dataset:
    """A dataset split for training.

    - ``load_dataset(source)``: a named dataset (``ml-100k``, ``ml-1m``, ``ncf-ml-1m``, ...) or a
      ratings file, split by ncf (leave-one-out by time: test, then validation).
    - ``load_dataset(train=PATH, test=PATH, valid=None)``: a given split (the field's fixed
      benchmark splits, your own files). Validation is ``valid`` (a file), else carved from
      the training file (``valid_ratio`` of each user's items, seeded); ``valid=False``: none.
      The test file is read only by evaluation. ``layout="adjacency"``: files of
      ``user item item ...`` lines (detected when left out).
    - ``holdout=None``: no holdout at all, every interaction trains (a model for deployment).

    ``options`` are those of :class:`ncf.data.datasets.DataConfig` (``user_col``, ``time_col``,
    ``sep``, ``seed``, ``min_rating``, ``split``, ...), as the CLI's dataset flags."""
    options = _split_option(holdout, options)
    if isinstance(valid, bool):
        options["valid"] = valid and options.get("valid", True)
    elif valid is not None:
        if train is None:
            raise ConfigError("valid=PATH is the validation file of a given split: pass train=... and test=... too")
        options["valid_file"] = str(valid)
    if (source is None) == (train is None):
        raise ConfigError("load_dataset takes a source (a dataset name or a ratings file, split by ncf) or "
                          "train=PATH with test=PATH (a given split), not " + ("both" if source is not None else
                                                                                "neither"))
    if train is not None and test is None and options.get("split") != "none":
        raise ConfigError("train=PATH needs test=PATH (a given split), or holdout=None to train on all of it; "
                          "load_dataset(PATH) splits one file")
    if test is not None and train is None:
        raise ConfigError("test=PATH is the test file of a given split: pass train=PATH with it")
    cfg = DataConfig(source=str(train if train is not None else source),
                     data_dir=None if data_dir is None else str(data_dir),
                     test_file=None if test is None else str(test), layout=layout, valid_ratio=valid_ratio, **options)
    return _load(cfg)


def _frame_ratings(df, user, item, time, rating, name: str, min_rating) -> Ratings:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"from_pandas needs pandas DataFrames, got {type(df).__name__}")
    cols = {"user": user, "item": item, "rating": rating, "timestamp": time}
    missing = [f"{role}={c!r}" for role, c in cols.items() if c is not None and c not in df.columns]
    if missing:
        raise DataError(f"DataFrame {name!r}: no column {', '.join(missing)} (columns: "
                        f"{', '.join(map(str, df.columns))})")
    names = list(df.columns)
    for role, c in cols.items():
        if c is not None and names.count(c) > 1:
            raise DataError(f"DataFrame {name!r}: {names.count(c)} columns are named {c!r} (positions "
                            f"{', '.join(str(i) for i, n in enumerate(names) if n == c)}), the {role} column "
                            "is ambiguous: rename or drop the others")
    pos = {role: (None if c is None else names.index(c)) for role, c in cols.items()}
    return read_frame(df, pos, Path(f"<DataFrame {name}>"), "error", min_rating)


def from_pandas(df: pd.DataFrame, user: str = "user", item: str = "item", time: str | None = None,
                rating: str | None = None, *, test: pd.DataFrame | None = None,
                valid: pd.DataFrame | bool | None = None, holdout: str | None = "auto", name: str = "dataframe",
                min_rating: float | None = None, seed: int = 0, n_neg_eval: int = 99, min_train: int = 1,
                valid_ratio: float = 0.1) -> Dataset:
    """A DataFrame of interactions (one row each; any other columns are ignored) as a split
    dataset. Without ``time`` the held-out items are drawn at random (seeded); rows with a
    missing id, a non-number rating or time are refused with the row named.

    ``test=test_df``: a given split (``df`` is training; ``valid`` a validation DataFrame, else
    carved from ``df`` by ``valid_ratio``; the same columns in each). ``valid=False``: no
    validation holdout. ``holdout=None``: no holdout at all (every row trains)."""
    if rating is None and min_rating is not None:
        raise DataError("min_rating needs a rating column (rating=...)")
    frame = isinstance(valid, pd.DataFrame)
    if frame and test is None:
        raise ConfigError("valid=DataFrame is the validation part of a given split: pass test=DataFrame too")
    options = _split_option(holdout, {"valid": valid is not False} if not frame else {})
    ratings = _frame_ratings(df, user, item, time, rating, name, min_rating)
    cfg = DataConfig(source=IN_MEMORY, seed=seed, n_neg_eval=n_neg_eval, min_train=min_train,
                     min_rating=min_rating, user_col=user, item_col=item, rating_col=rating, time_col=time,
                     test_file=None if test is None else IN_MEMORY, valid_file=IN_MEMORY if frame else None,
                     valid_ratio=valid_ratio, **options)
    if test is None:
        return split_ratings(ratings, cfg, name)
    from ncf.data.given import given_split

    valid_r = _frame_ratings(valid, user, item, time, rating, f"{name} valid", min_rating) if frame else None
    return given_split(cfg, name, ratings, valid_r,
                       lambda: _frame_ratings(test, user, item, time, rating, f"{name} test", min_rating),
                       f"<DataFrame {name} test>", f"<DataFrame {name}>")


class FittedModel:
    """A trained model with its id maps, training interactions and configuration.

    ``recommend`` and ``similar_items`` take raw ids and return DataFrames; ``model`` is the
    underlying ``nn.Module`` (a Scorer over indexes), ``recommender`` the shared recommend path.
    """

    def __init__(self, recommender: Recommender, config: TrainConfig, data_config: dict | None = None,
                 summary: dict | None = None, report: dict | None = None):
        self.recommender = recommender
        self.config = config
        self.data_config = dict(data_config or {})
        self.summary = summary
        self.report = dict(report or {})

    @property
    def model(self) -> torch.nn.Module:
        return self.recommender.model

    @property
    def name(self) -> str:
        return self.recommender.model.name

    @property
    def user_ids(self) -> list:
        return self.recommender.user_map.raw_ids

    @property
    def item_ids(self) -> list:
        return self.recommender.item_map.raw_ids

    def __repr__(self) -> str:
        m = self.model
        valid = (self.summary or {}).get("valid") or {}
        v = f", valid ndcg@10 {valid['ndcg@10']:.4f}" if "ndcg@10" in valid else ""
        return f"FittedModel({self.name!r}, {m.n_users} users, {m.n_items} items{v})"

    def recommend(self, users, k: int = 10, *, filter_seen: bool = True, items: Iterable | None = None,
                  rerank: bool = False, batch_size: int | None = None) -> pd.DataFrame:
        """Top ``k`` items per raw user id (one id or a list): columns ``user, rank, item, score,
        fallback`` (+ ``title`` where the dataset has titles, ``utility`` when re-ranked).
        Users the model does not know get the most popular items, ``fallback=True``. Users are
        scored ``batch_size`` at a time (None: about 256 MiB of scores a block)."""
        rec = self.recommender
        table = rec.recommend_table(_id_list(users, "user"), k, filter_seen, None, items, rerank, batch_size)
        columns = ["user", "rank", "item", "score", "title", "utility", "fallback"]
        return _frame(table.columns(rec, lists=False), columns)

    def similar_items(self, items, k: int = 10) -> pd.DataFrame:
        """The ``k`` items nearest each raw item id by cosine of the model's item embeddings:
        columns ``item, rank, similar, score`` (+ ``title``)."""
        rows = []
        for item in _id_list(items, "item"):
            idx = self.recommender.item_map.get(item)
            raw = self.recommender.item_map.raw(idx) if idx is not None else item
            for n, it in enumerate(self.recommender.similar(item, k), 1):
                rows.append({"item": raw, "rank": n, "similar": it["item"], "score": it["score"],
                             "title": it["title"]})
        return _frame(rows, ["item", "rank", "similar", "score", "title"])

    def score(self, users, items) -> np.ndarray:
        """Model scores of (raw user, raw item) pairs (logits for neural models)."""
        users, items = _id_list(users, "user"), _id_list(items, "item")
        if len(users) != len(items):
            raise ConfigError(f"{len(users)} users but {len(items)} items: score takes pairs")
        u = torch.tensor([self.recommender.user_map.index(x, "user") for x in users], dtype=torch.int64)
        i = torch.tensor([self.recommender.item_map.index(x, "item") for x in items], dtype=torch.int64)
        dev = self.recommender.device
        return self.model.score(u.to(dev), i.to(dev)).double().cpu().numpy()

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the run directory (config.json, weights, id maps, training interactions,
        summary.json) that ``ncf.load`` and the CLI (``ncf recommend``, ``ncf serve``) read."""
        from ncf.outputs import prepare_output_dir
        from ncf.train.run import in_partial, locked, write_header

        out = Path(directory)
        rec = self.recommender

        def write(work: Path) -> None:
            write_header(work, self.data_config, self.config, self.model, rec.user_map, rec.item_map, rec.seen,
                         rec.item_info, self.report)
            save_model(work, self.model, {"train": self.config.to_dict(), "data": self.data_config,
                                          "dataset_report": self.report})
            if self.summary is not None:
                atomic_write_json(work / "summary.json", self.summary)

        with locked(out):  # the rule of every ncf output (ncf.outputs): only a run's own files are replaced
            prepare_output_dir(out, "run", overwrite, flag="save", hint="save(..., overwrite=True)")
            in_partial(out, write, keep=False)  # whole or not at all
        return out


def fit(model: str, data: Dataset | str, *, out: str | Path | None = None, progress: bool = True,
        **options: Any) -> FittedModel:
    """Train registry model ``model`` on ``data`` (a Dataset, or a source as in
    :func:`load_dataset`). ``options``: the model's hyperparameters and training settings
    (``factors``, ``layers``, ``epochs``, ``lr``, ``l2``, ...); one that does not apply to
    the model is refused. Early stopping and the kept epoch use the validation holdout;
    the test holdout is not passed to training at all. ``out``: also write the run directory."""
    from ncf.train.run import train_model

    cfg = TrainConfig.for_model(model, options)
    if isinstance(data, str | Path):
        data = load_dataset(str(data))
    if not isinstance(data, Dataset):
        raise TypeError(f"fit needs a Dataset (ncf.load_dataset / ncf.from_pandas), got {type(data).__name__}")
    ds = data.without_test()
    with quiet(not progress):
        net, summary = train_model(None, cfg, None if out is None else Path(out), ds, progress)
    t = ds.train
    rec = Recommender(net.eval(), t.user_map, t.item_map, t.matrix, ds.item_info)
    return FittedModel(rec, cfg.resolved(t.nnz), ds.config, summary, ds.report)


def load(directory: str | Path, device: str = "cpu") -> FittedModel:
    """A run directory written by ``ncf train``, ``ncf tune`` or ``FittedModel.save``."""
    directory = Path(directory)
    rec = Recommender.from_run(directory, device=device)
    cfg = load_config(directory)
    try:
        train_cfg = TrainConfig.from_dict(cfg.get("train") or {"model": rec.model.name})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: bad train section ({e})") from None
    summary = read_json(directory / "summary.json") if (directory / "summary.json").exists() else None
    return FittedModel(rec, train_cfg, cfg.get("data"), summary, cfg.get("dataset_report"))


def evaluate(model: FittedModel, data: Dataset, protocol: str = "sampled", split: str = "test",
             k: int | Iterable[int] = 10) -> dict[str, float]:
    """HR@k and NDCG@k of ``model`` on ``data``'s ``split`` holdout (``test`` or ``valid``):
    ``sampled`` ranks each held-out item among itself and its sampled negatives (NCF), ``full``
    among every item the user has not seen; ``topk`` ranks all unseen items once per user with
    every held-out item relevant (recall@k, capped_recall@k, ndcg@k, ... for each k in ``k``).
    ``data`` must be the dataset the model was fit on (the same ids and training interactions;
    else the metrics would be meaningless)."""
    from ncf.eval.evaluator import evaluate as _evaluate

    if not isinstance(model, FittedModel):
        raise TypeError(f"evaluate needs a FittedModel (ncf.fit / ncf.load), got {type(model).__name__}")
    rec = model.recommender
    t = data.train
    if rec.user_map != t.user_map or rec.item_map != t.item_map:
        raise ConfigError(f"the model was fit on other ids ({len(rec.user_map)} users / {len(rec.item_map)} items) "
                         f"than this dataset's ({data.n_users} / {data.n_items})")
    if (rec.seen != t.matrix).nnz:
        raise ConfigError("the model was fit on other training interactions than this dataset's "
                         "(another split, seed or valid setting?)")
    holdout = {"test": data.test, "valid": data.valid}.get(split, "?")
    if holdout == "?":
        raise ConfigError(f"split must be 'test' or 'valid', got {split!r}")
    if holdout is None:
        raise ConfigError(f"this dataset has no {split} holdout")
    ks = (k,) if isinstance(k, int) else tuple(k)
    return _evaluate(rec.model, holdout, protocol, seen=data.seen(include_valid=split == "test"), ks=ks)


def _as_list(x) -> list:
    if isinstance(x, str | bytes) or not isinstance(x, Iterable):
        return [x]
    return list(x.tolist() if isinstance(x, np.ndarray | pd.Series | pd.Index) else x)


def _id_list(x, what: str) -> list:
    """Raw ids as a list; a missing one (None, NaN) is refused, naming its position: it is no id
    (as a user it would get the popular fallback, and turn the id column into floats)."""
    ids = _as_list(x)
    for n, v in enumerate(ids):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
            raise DataError(f"{what} id {n} of {len(ids)} is {v!r}, not an id: drop the missing {what}s first")
    return ids


def _frame(rows: list[dict] | dict[str, list], columns: list[str]) -> pd.DataFrame:
    """Rows (or column lists) as a DataFrame; the optional columns (title, utility) only where
    some row has one."""
    df = pd.DataFrame(rows, columns=columns)
    optional = ("title", "utility")
    return df[[c for c in columns if c not in optional or df[c].notna().any()]]
