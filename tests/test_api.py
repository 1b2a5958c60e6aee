"""The Python front door (``ncf.fit`` and friends) on the planted toy dataset and a DataFrame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import ncf
from ncf.errors import ConfigError, DataError, NcfError


class _Poison:
    """A test holdout that fails on any use: fitting must never touch it."""

    def __getattr__(self, name):
        raise AssertionError(f"fitting read the test holdout ({name})")

    def __len__(self):
        raise AssertionError("fitting read the test holdout (len)")


def test_fit_never_reads_the_test_holdout(toy_dataset):
    poisoned = dataclasses.replace(toy_dataset, test=_Poison())
    model = ncf.fit("gmf", poisoned, epochs=2, batch_size=64, progress=False)
    assert model.summary["test"] is None and model.summary["valid"]["hr@10"] >= 0


def test_options_that_do_not_apply_are_refused_by_name(toy_dataset):
    with pytest.raises(ConfigError, match=r"dropout do not apply to model 'gmf'"):
        ncf.fit("gmf", toy_dataset, dropout=0.3)
    with pytest.raises(ConfigError, match=r"factors do not apply to model 'pop'"):
        ncf.fit("pop", toy_dataset, factors=8)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) fators"):
        ncf.fit("gmf", toy_dataset, fators=8)
    with pytest.raises(ConfigError, match="unknown model"):
        ncf.fit("nope", toy_dataset)


def test_a_model_parameter_of_the_same_name_goes_to_the_model(toy_dataset):
    cfg = ncf.TrainConfig.for_model("item2vec", {"epochs": 3})  # item2vec's own passes, not SGD epochs
    assert cfg.params == {"epochs": 3} and cfg.epochs == ncf.TrainConfig.epochs
    cfg = ncf.TrainConfig.for_model("ease", {"l2": 50.0})
    assert cfg.params == {"l2": 50.0}
    cfg = ncf.TrainConfig.for_model("gmf", {"l2": 0.01, "factors": 4})
    assert cfg.l2 == 0.01 and cfg.factors == 4 and cfg.params == {}


def test_progress_false_is_quiet(toy_dataset, capsys):
    ncf.fit("gmf", toy_dataset, epochs=2, batch_size=64, progress=False)
    ncf.fit("item2vec", toy_dataset, epochs=2, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_recommend_batches_users_and_marks_the_fallback(toy_dataset):
    model = ncf.fit("ease", toy_dataset, progress=False)
    users = toy_dataset.train.user_map.raw_ids[:3] + ["stranger"]
    recs = model.recommend(users, k=4)
    assert recs["user"].tolist() == [u for u in users for _ in range(4)]
    assert recs.groupby("user", sort=False)["fallback"].first().tolist() == [False, False, False, True]
    one = model.recommend(users[0], k=4)  # a single id works as well as a list
    assert one["item"].tolist() == recs.loc[recs.user == users[0], "item"].tolist()
    with pytest.raises(NcfError, match="unknown item"):
        model.recommend(users[:1], k=2, items=["no-such-item"])


def test_save_refuses_a_non_empty_directory_then_round_trips(toy_dataset, tmp_path):
    model = ncf.fit("pop", toy_dataset, progress=False)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(NcfError, match="did not write"):
        model.save(tmp_path / "x")
    run = model.save(tmp_path / "run")
    back = ncf.load(run)
    assert back.recommend([0, 1], k=3).equals(model.recommend([0, 1], k=3))


def test_evaluate_refuses_another_dataset(toy_dataset):
    model = ncf.fit("pop", toy_dataset, progress=False)
    other = dataclasses.replace(toy_dataset, train=dataclasses.replace(
        toy_dataset.train, matrix=toy_dataset.train.matrix[::-1].tocsr()))
    with pytest.raises(ValueError, match="other training interactions"):
        ncf.evaluate(model, other)
    res = ncf.evaluate(model, toy_dataset, protocol="full", k=[5, 10])
    assert set(res) >= {"hr@5", "hr@10", "ndcg@5", "ndcg@10"}


def test_from_pandas_names_bad_columns_and_rows():
    df = pd.DataFrame({"customer": ["a", "a", "b", "b", "b"], "product": ["x", "y", "x", "z", "y"],
                       "ts": [1, 2, 1, 2, 3]})
    with pytest.raises(DataError, match=r"no column item='item' \(columns: customer, product, ts\)"):
        ncf.from_pandas(df, user="customer")
    bad = df.assign(ts=[1, 2, "soon", 2, 3])
    with pytest.raises(DataError, match=r"DataFrame shop>:3"):
        ncf.from_pandas(bad, user="customer", item="product", time="ts", name="shop")
    data = ncf.from_pandas(df, user="customer", item="product", time="ts")
    assert data.n_users == 2 and data.n_items == 3 and data.report["timestamps"]
    # the latest interaction of each user is the test item
    assert sorted(data.train.item_map.raws(data.test.items)) == ["y", "y"]
    model = ncf.fit("pop", data, progress=False)
    recs = model.recommend(["a", "new"], k=2)
    assert recs.loc[recs.user == "new", "fallback"].all()
    assert np.isfinite(model.score(["a"], ["x"])).all()


def test_load_dataset_and_evaluate_on_real_data(ml100k_dir):
    data = ncf.load_dataset("ml-100k")
    model = ncf.fit("ease", data, progress=False)
    res = ncf.evaluate(model, data)  # sampled protocol: EASE is far above popularity here
    assert res["hr@10"] > 0.5
    with pytest.raises(ConfigError, match="no item embeddings"):  # EASE has no embeddings to compare
        model.similar_items([50])


def test_save_overwrite_replaces_a_run_and_never_deletes_other_files(toy_dataset, tmp_path):
    """``save(overwrite=True)`` follows the CLI's rule: a run is replaced whole (no file of the
    old run left mixed in), and a directory holding files ncf did not write is refused, kept."""
    pop = ncf.fit("pop", toy_dataset, progress=False)
    run = pop.save(tmp_path / "run")
    (run / "state.safetensors").write_bytes(b"an old run's resumable state")
    with pytest.raises(NcfError, match="overwrite=True"):
        pop.save(run)
    ncf.fit("itemknn", toy_dataset, progress=False).save(run, overwrite=True)
    assert ncf.load(run).name == "itemknn" and not (run / "state.safetensors").exists()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(NcfError, match="notes.txt"):
        pop.save(run, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and ncf.load(run).name == "itemknn"


def test_a_missing_user_id_is_refused_not_recommended_to(toy_dataset):
    """``None`` is no user: it would get the popular fallback and turn the user column into floats."""
    model = ncf.fit("pop", toy_dataset, progress=False)
    known = toy_dataset.train.user_map.raw_ids[0]
    with pytest.raises(DataError, match=r"user id 2 of 3 is None, not an id"):
        model.recommend([known, known, None], k=2)
    with pytest.raises(DataError, match=r"user id 0 of 1 is nan"):
        model.recommend(float("nan"), k=2)
    assert model.recommend([known], k=2)["user"].tolist() == [known, known]


def test_from_pandas_refuses_two_columns_of_the_asked_name():
    df = pd.DataFrame([[1, 1, 5], [1, 2, 3], [2, 1, 4]], columns=["user", "item", "item"])
    with pytest.raises(DataError, match=r"2 columns are named 'item' \(positions 1, 2\)"):
        ncf.from_pandas(df)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("factors", "8", r"factors must be an integer, got '8' \(str\)"),
    ("epochs", 1.5, r"epochs must be an integer, got 1.5 \(float\)"),
    ("lr", "0.01", r"lr must be a number, got '0.01'"),
    ("epochs", True, r"epochs must be an integer, got True"),
])
def test_an_option_of_the_wrong_type_is_refused_by_name(toy_dataset, option, value, message):
    with pytest.raises(ConfigError, match=message):
        ncf.fit("gmf", toy_dataset, **{option: value})


def test_a_dataset_prints_its_sizes_not_its_arrays(toy_dataset):
    text = repr(toy_dataset)
    assert len(text) < 200 and f"{toy_dataset.n_users} users" in text and "array" not in text
    assert len(repr(toy_dataset.test)) < 120 and "held-out" in repr(toy_dataset.test)
    assert "Dataset(" in str(toy_dataset)


def test_an_unused_time_column_is_named_for_python_too(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,when\n" + "".join(f"{u},{i},2024-01-{1 + i:02d}\n" for u in range(5) for i in range(6)))
    ds = ncf.load_dataset(str(path), valid=False)
    assert any("time_col= from Python" in w for w in ds.report["read"]["warnings"])
