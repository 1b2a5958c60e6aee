"""The command line behaves the same way everywhere: flags that do not apply are refused,
reports take --json, ncf's own errors are one line, bugs keep their traceback, ``--help`` is
light, output is not wrapped when it is not a terminal."""

from __future__ import annotations

import json
import subprocess
import sys

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


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "plays.csv"
    rows = ["user,item,ts"] + [f"{u},{(u * 7 + j) % 30},{j}" for u in range(40) for j in range(8)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(("model", "flag", "value"), [("gmf", "--dropout", "0.3"), ("pop", "--factors", "8"),
                                                       ("ease", "--epochs", "3"), ("itemknn", "--lr", "0.1")])
def test_flags_that_do_not_apply_are_refused(model, flag, value, ratings, tmp_path, capsys):
    code, _, err = run(capsys, "train", "--dataset", str(ratings), "--model", model, "--out", str(tmp_path / "r"),
                       flag, value)
    assert code == 2 and f"option(s) {flag} do not apply to model '{model}'" in err  # as typed
    assert not (tmp_path / "r").exists()


def test_item2vec_epochs_are_its_own_passes(ratings, tmp_path, capsys):
    run_dir = tmp_path / "i2v"
    code, _, err = run(capsys, "train", "--dataset", str(ratings), "--model", "item2vec", "--epochs", "3",
                       "--out", str(run_dir), "--quiet")
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["model_params"]["epochs"] == 3


def test_train_json_labels_and_evaluate_k_list(ratings, tmp_path, capsys):
    run_dir = tmp_path / "gmf"
    code, out, err = run(capsys, "train", "--dataset", str(ratings), "--model", "gmf", "--epochs", "2",
                         "--out", str(run_dir), "--json", "--quiet")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == "gmf" and summary["test"]["hr@10"] >= 0
    code, out, err = run(capsys, "train", "--dataset", str(ratings), "--model", "pop", "--out", str(tmp_path / "p"))
    # 30 items, 8 seen by each user: 22 negatives to rank the held-out item among, not 99
    assert "test (1 + 22 sampled)" in err and "test (full ranking)" in err and "valid (1 + 22 sampled)" in err
    assert "look like ratings" not in err  # a column named "ts" holding 0..7 is an order, as its name says
    code, out, _ = run(capsys, "evaluate", str(run_dir), "-k", "5,20", "--json")
    assert code == 0 and set(json.loads(out)["metrics"]) == {"hr@5", "ndcg@5", "hr@20", "ndcg@20"}
    code, _, err = run(capsys, "evaluate", str(run_dir), "-k", "5,x")
    assert code == 2 and "-k expects whole numbers" in err


def test_evaluate_takes_data_dir_and_runs_remember_theirs(tmp_path, capsys, ml100k_dir, monkeypatch):
    run_dir = tmp_path / "pop"
    code, _, err = run(capsys, "train", "--dataset", "ml-100k", "--model", "pop", "--out", str(run_dir), "--quiet")
    assert code == 0, err
    saved = json.loads((run_dir / "config.json").read_text())["data"]["data_dir"]
    assert saved == str(ml100k_dir.parent)
    monkeypatch.setenv("NCF_DATA_DIR", str(tmp_path / "elsewhere"))  # the run still finds its data
    code, out, err = run(capsys, "evaluate", str(run_dir), "--json")
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", str(run_dir), "--data-dir", str(tmp_path / "empty"))
    assert code == 2 and "empty" in err


def test_recommend_json_keeps_titles(tmp_path, capsys, ml100k_dir):
    run_dir = tmp_path / "pop"
    run(capsys, "train", "--dataset", "ml-100k", "--model", "pop", "--out", str(run_dir), "--quiet")
    code, out, _ = run(capsys, "recommend", str(run_dir), "--user", "1", "-k", "3", "--json")
    assert code == 0 and all(it["title"] for it in json.loads(out)["items"])


def test_own_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, "evaluate", str(tmp_path / "missing"))
    assert code == 2 and err.strip().count("\n") == 0 and err.startswith("error: ")
    import ncf.cli.train as cli_train

    def broken(*a, **k):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli_train, "parse_ks", broken)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(KeyError, match="a bug"):
        main(["evaluate", str(tmp_path / "run")])


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom ncf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "NO-TORCH" in res.stderr and "train" in res.stdout


def test_output_that_is_not_a_terminal_is_not_wrapped():
    code = ("from ncf.console import console\nconsole.print('x' * 150)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stderr.rstrip("\n") == "x" * 150


def test_ctrl_c_says_how_to_resume(ratings, tmp_path, capsys, monkeypatch):
    import ncf.train.run as run_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "train", interrupted)
    code, _, err = run(capsys, "train", "--dataset", str(ratings), "--model", "gmf", "--out", str(tmp_path / "r"))
    assert code == 130 and f"ncf train --resume {tmp_path / 'r'}" in err
