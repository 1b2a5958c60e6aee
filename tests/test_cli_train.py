"""The train / evaluate / recommend commands, in-process through ncf.cli.main."""

import json

import numpy as np
import pytest
import torch

from ncf.checkpoint import load_model
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
def trained(tmp_path_factory, ml100k_dir):
    out = tmp_path_factory.mktemp("cli") / "gmf"
    try:
        main(["train", "--dataset", "ml-100k", "--model", "gmf", "--epochs", "2", "--batch-size", "1024",
              "--device", "cpu", "--quiet", "--out", str(out)])
    except SystemExit as e:
        assert not e.code
    return out


def test_evaluate_json_both_protocols(trained, capsys):
    code, out, _ = run(capsys, "evaluate", str(trained), "--json")
    assert code == 0
    res = json.loads(out)
    assert res["protocol"] == "sampled" and set(res["metrics"]) == {"hr@10", "ndcg@10"}
    summary = json.loads((trained / "summary.json").read_text())
    assert res["metrics"]["hr@10"] == pytest.approx(summary["test"]["hr@10"])
    code, out, _ = run(capsys, "evaluate", str(trained), "--protocol", "full", "-k", "5", "-k", "20", "--json")
    assert code == 0
    m = json.loads(out)["metrics"]
    assert set(m) == {"hr@5", "ndcg@5", "recall@5", "hr@20", "ndcg@20", "recall@20", "mrr"}
    assert m["hr@5"] <= m["hr@20"]


def test_recommend_excludes_seen_and_uses_raw_ids(trained, ml100k, capsys):
    code, out, _ = run(capsys, "recommend", str(trained), "--user", "196", "-k", "10", "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["user"] == 196 and rec["fallback"] is False and len(rec["items"]) == 10
    u = ml100k.train.user_map.index(196)
    seen_raw = set(ml100k.train.item_map.raws(ml100k.train.matrix[u].indices))
    got = [it["item"] for it in rec["items"]]
    assert not seen_raw & set(got)
    assert all(isinstance(i, int) and 1 <= i <= 1682 for i in got)
    scores = [it["score"] for it in rec["items"]]
    assert scores == sorted(scores, reverse=True)
    code, out, _ = run(capsys, "recommend", str(trained), "--user", "196", "-k", "10", "--include-seen", "--json")
    with_seen = [it["item"] for it in json.loads(out)["items"]]
    scores_all = load_model(trained).score_all(torch.tensor([u]))[0].numpy()
    assert with_seen == ml100k.train.item_map.raws(np.argsort(-scores_all, kind="stable")[:10])
    unseen_scores = scores_all.copy()
    unseen_scores[ml100k.train.matrix[u].indices] = -np.inf
    assert got == ml100k.train.item_map.raws(np.argsort(-unseen_scores, kind="stable")[:10])


def test_unknown_user_gets_flagged_popular_items(trained, ml100k, capsys):
    code, out, _ = run(capsys, "recommend", str(trained), "--user", "no-such-user", "-k", "3", "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["fallback"] is True and len(rec["items"]) == 3
    counts = ml100k.train.item_counts()
    top = ml100k.train.item_map.raws(np.lexsort((np.arange(len(counts)), -counts))[:3])  # ties: lower index
    assert [it["item"] for it in rec["items"]] == top


@pytest.mark.parametrize("argv,needle", [
    (["train", "--dataset", "ml-100k", "--epochs", "-1", "--out", "x"], "epochs must be >= 1"),
    (["train", "--dataset", "ml-100k", "--layers", "64,abc", "--out", "x"], "layers must be comma-separated"),
    (["train", "--dataset", "no-such-dataset", "--out", "x"], "unknown source"),
    (["train", "--dataset", "ml-100k", "--model", "nope", "--out", "x"], "unknown model"),
    (["train", "--dataset", "ml-100k"], "ncf train needs --out DIR"),
    (["evaluate", "/nonexistent/run"], "no such run directory"),
    (["recommend", "/nonexistent/run", "--user", "1"], "no such run directory"),
    (["evaluate", ".", "--protocol", "weird"], "not a run directory"),
    (["train", "--dataset", "ml-100k", "--epochs", "many", "--out", "x"], "Invalid value for '--epochs'"),
    (["train", "--dataset", "ml-100k", "--no-such-flag"], "No such option: --no-such-flag"),
    (["train", "--dataset", "ml-100k", "--sparse", "yes", "--out", "x"], "sparse must be one of auto, on, off"),
])
def test_bad_input_gives_one_clear_line(capsys, argv, needle, ml100k_dir):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_evaluate_refuses_a_run_trained_on_another_split(trained, capsys, tmp_path):
    """A run whose training interactions are not what its dataset's training split holds now
    (another seed, file, or an older ncf's tie rule) could be asked for items it trained on:
    refused by name, never scored."""
    import shutil

    from ncf.checkpoint import load_train_matrix, save_train_matrix

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    m = load_train_matrix(other).tolil()
    m[0, int(np.flatnonzero(m.toarray()[0] == 0)[0])] = 1  # one interaction the split does not hold
    save_train_matrix(other, m.tocsr())
    code, out, err = run(capsys, "evaluate", str(other))
    assert code == 2 and "trained on other interactions than its dataset's training split" in err
    assert "(1 differ" in err and not out


def test_bad_k_and_protocol(trained, capsys):
    code, _, err = run(capsys, "recommend", str(trained), "--user", "1", "-k", "0")
    assert code == 2 and "-k must be >= 1" in err
    code, _, err = run(capsys, "evaluate", str(trained), "--protocol", "weird")
    assert code == 2 and "unknown protocol" in err


def test_train_fuses_pretrained_runs_from_the_command_line(trained, tmp_path, capsys):
    """--pretrained-gmf/--pretrained-mlp imply --pretrain; a GMF given as the MLP is one clear line."""
    mlp = tmp_path / "mlp"
    base = ["train", "--dataset", "ml-100k", "--epochs", "1", "--batch-size", "1024", "--device", "cpu", "--quiet"]
    code, _, err = run(capsys, *base, "--model", "mlp", "--dropout", "0.3", "--out", str(mlp))
    assert code == 0, err
    code, _, err = run(capsys, *base, "--model", "neumf", "--pretrained-gmf", str(trained), "--pretrained-mlp",
                       str(mlp), "--finetune-optimizer", "adam", "--finetune-lr", "0.0001",
                       "--out", str(tmp_path / "n"))
    assert code == 0, err
    cfg = json.loads((tmp_path / "n" / "config.json").read_text())["train"]
    assert cfg["pretrain"] is True and cfg["pretrained_mlp"] == str(mlp.resolve())
    assert cfg["finetune_optimizer"] == "adam" and cfg["finetune_lr"] == 0.0001
    assert (tmp_path / "n" / "pretrain-gmf" / "summary.json").read_text() == (trained / "summary.json").read_text()
    code, _, err = run(capsys, *base, "--model", "neumf", "--pretrained-mlp", str(trained),
                       "--out", str(tmp_path / "x"))
    assert code != 0 and "needs a mlp run" in err and "Traceback" not in err


def test_train_sparse_flag_reaches_the_trainer(tmp_path, capsys, ml100k_dir):
    """--sparse on: the tables take sparse row gradients (RowAdam) even on data this small; the
    run records the choice."""
    out = tmp_path / "sparse"
    code, _, err = run(capsys, "train", "--dataset", "ml-100k", "--model", "neumf", "--sparse", "on", "--epochs", "1",
                       "--batch-size", "1024", "--device", "cpu", "--quiet", "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["train"]["sparse"] == "on"
    from safetensors import safe_open

    with safe_open(str(out / "state.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["optimizer"])["param_groups"]
    assert len(groups) == 2  # dense Adam for the layers + RowAdam for the tables (plain Adam: one group)
