"""The given-split options (--train / --test / --valid / --layout / --valid-ratio) and
--split none across the commands, in-process through ncf.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ncf.cli import main


def run(capsys, *argv):
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    tr, te = [], []
    for u in range(50):
        items = rng.choice(40, size=int(rng.integers(5, 14)), replace=False)
        tr.append(" ".join(map(str, [u, *items[:-2]])))
        te.append(" ".join(map(str, [u, *items[-2:]])))
    te.append("77 1 2")  # a user the training file never saw: left out, counted
    (tmp_path / "train.txt").write_text("\n".join(tr) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(te) + "\n")
    return tmp_path


def test_train_given_split_then_evaluate_elsewhere(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    code, out, err = run(capsys, "train", "--train", "train.txt", "--test", "test.txt", "--layout", "adjacency",
                         "--model", "pop", "--out", "runs/pop", "--json")
    assert code == 0, err
    summary = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert summary["test"]["hr@10"] >= 0 and summary["valid_topk"]["recall@20"] >= 0  # the field's protocol
    assert "2 of 102 test pairs left out of the test holdout" in err  # user 77's two pairs
    data = json.loads((files / "runs/pop/config.json").read_text())["data"]
    assert data["source"] == str(files / "train.txt") and data["test_file"] == str(files / "test.txt")
    assert data["split"] == "given" and data["layout"] == "adjacency"
    elsewhere = files / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run names its files by absolute paths
    code, out, err = run(capsys, "evaluate", str(files / "runs/pop"), "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["hr@10"] == pytest.approx(summary["test"]["hr@10"])


def test_split_none_trains_on_everything_and_recommends(files, capsys):
    out_dir = files / "runs" / "mf"
    code, out, err = run(capsys, "train", "--train", str(files / "train.txt"), "--split", "none", "--model", "mf",
                         "--epochs", "2", "--device", "cpu", "--out", str(out_dir))
    assert code == 0, err
    assert "no validation holdout: the last epoch is kept, no early stopping" in out + err
    assert "no holdout (--split none), so no metrics" in out + err
    data = json.loads((out_dir / "config.json").read_text())["data"]
    assert data["split"] == "none" and data["valid"] is False
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["test"] is None
    code, out, err = run(capsys, "recommend", str(out_dir), "--user", "3", "-k", "4", "--json")
    assert code == 0, err
    assert len(json.loads(out)["items"]) == 4
    code, out, err = run(capsys, "evaluate", str(out_dir))
    assert code != 0 and "trained with --split none" in err


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "ml-100k", "--train", "X"], "--dataset and --train both name the data"),
    (["--test", "X"], "--test needs --train FILE"),
    (["--train", "X"], "--train FILE needs --test FILE"),
    ([], "name the data"),
])
def test_train_data_options_refused(argv, message, capsys, tmp_path):
    code, _, err = run(capsys, "train", *argv, "--model", "pop", "--out", str(tmp_path / "r"))
    assert code != 0 and message in err


def test_given_split_options_on_tune_compare_info(files, capsys):
    for cmd in (["tune", "--time-budget", "5"], ["compare"]):
        code, _, err = run(capsys, *cmd, "--dataset", "ml-100k", "--train", str(files / "train.txt"), "--out",
                           str(files / "o"))
        assert code != 0 and "--dataset and --train both name the data" in err
    code, _, err = run(capsys, "tune", "--time-budget", "5", "--dataset", "ml-100k", "--split", "none", "--out",
                       str(files / "o"))
    assert code != 0 and "--split none holds nothing out" in err
    code, out, err = run(capsys, "data", "info", "--train", str(files / "train.txt"), "--test",
                         str(files / "test.txt"), "--layout", "adjacency", "--valid-ratio", "0.2", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["split"]["test"] == 100 and info["report"]["test"]["unseen_user_pairs"] == 2
    assert info["report"]["valid"]["valid_ratio"] == 0.2
    assert info["split"]["train"] + info["split"]["valid"] == info["report"]["split_sizes"]["train_file"]


def test_compare_takes_a_given_split(files, capsys):
    code, out, err = run(capsys, "compare", "--train", str(files / "train.txt"), "--test", str(files / "test.txt"),
                         "--models", "pop", "--tune-budget", "1", "--out", str(files / "cmp"), "--quiet", "--json")
    assert code == 0, err
    results = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert 0 <= results["pop"]["sampled"]["hr@10"] <= 1
