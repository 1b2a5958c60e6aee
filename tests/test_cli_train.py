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


# --- where a run is written: nothing a user owns is destroyed (ncf.outputs) -----------------

import errno  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

SMALL = ("--model", "gmf", "--epochs", "1", "--batch-size", "256", "--device", "cpu", "--quiet")


def _ratings(path: Path) -> Path:
    rnd = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u},{i},{rnd.randint(1, 5)},{1000 + 100 * u + k}\n"
                            for u in range(40) for k, i in enumerate(rnd.sample(range(30), 8))))
    return path


def _train(capsys, data, out, *extra):
    return run(capsys, "train", "--dataset", str(data), "--out", str(out), *SMALL, *extra)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_the_dataset_beside_it(tmp_path, capsys):
    """``--dataset imp/ratings.csv --out imp --overwrite`` deleted the dataset and notes in imp/."""
    data = _ratings(tmp_path / "imp" / "ratings.csv")
    (tmp_path / "imp" / "notes.txt").write_text("mine")
    before = _tree(tmp_path / "imp")
    code, _, err = _train(capsys, data, tmp_path / "imp", "--overwrite")
    assert code == 2 and err.count("\n") == 1, err
    assert "ncf did not write" in err and "notes.txt" in err and "ratings.csv" in err
    assert _tree(tmp_path / "imp") == before


def test_overwrite_of_a_folder_of_runs_is_refused(tmp_path, capsys):
    """``--out proj/runs --overwrite`` over a folder of runs and a notes file deleted them all."""
    data = _ratings(tmp_path / "r.csv")
    runs = tmp_path / "proj" / "runs"
    assert _train(capsys, data, runs / "a")[0] == 0
    (runs / "notes.md").write_text("mine")
    before = _tree(runs)
    code, _, err = _train(capsys, data, runs, "--overwrite")
    assert code == 2 and "a/ (a run)" in err and "notes.md" in err, err
    assert _tree(runs) == before


def test_overwrite_replaces_a_run_but_refuses_files_added_to_it(tmp_path, capsys):
    data = _ratings(tmp_path / "r.csv")
    out = tmp_path / "run"
    assert _train(capsys, data, out)[0] == 0
    (out / "model.onnx").write_bytes(b"an export of the old weights")  # a run's own (derived) file
    assert _train(capsys, data, out, "--overwrite")[0] == 0
    assert not (out / "model.onnx").exists() and (out / "idmap.json").exists()
    (out / "my-analysis.ipynb").write_text("{}")
    before = _tree(out)
    code, _, err = _train(capsys, data, out, "--overwrite")
    assert code == 2 and "my-analysis.ipynb" in err and "nothing is deleted" in err, err
    assert _tree(out) == before


HOLD = """
import sys, time
from ncf.outputs import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_run_being_written_is_locked(tmp_path, capsys):
    """Two writers of one run directory: the second is refused, told which process holds it (not
    that the running one is "interrupted"); ``--overwrite`` does not get past the lock either."""
    data = _ratings(tmp_path / "r.csv")
    out = tmp_path / "runs" / "c"
    out.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ((), ("--overwrite",)):
            code, _, err = _train(capsys, data, out, *extra)
            assert code == 2 and f"process {holder.pid} on {socket.gethostname()}" in err, err
            assert "interrupted" not in err and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file is left; the next writer takes it over
    lock = out.parent / ".c.lock"
    assert lock.exists() and str(holder.pid) in lock.read_text()
    code, out_text, err = _train(capsys, data, out)
    assert code == 0, err
    assert f"taken over from process {holder.pid}" in out_text + err
    assert (out / "idmap.json").exists() and not lock.exists()


def test_stale_lock_and_partial_run_of_a_dead_writer(tmp_path, capsys):
    """A writer killed mid-run leaves its lock file and partial directory: the next run is told how
    to continue (--resume) or discard it (--overwrite), never that a live process holds it."""
    data = _ratings(tmp_path / "r.csv")
    out = tmp_path / "c"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".c.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    (tmp_path / ".c.partial").mkdir()
    code, _, err = _train(capsys, data, out)
    assert code == 2 and "--resume" in err and "--overwrite" in err and "being written" not in err, err
    code, _, err = _train(capsys, data, out, "--overwrite")
    assert code == 0, err
    assert (out / "summary.json").exists() and not (tmp_path / ".c.partial").exists()
    assert not (tmp_path / ".c.lock").exists()  # taken over, then released


def _read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail as on a read-only mount (EROFS); reads work."""
    real_open, real_mkdir = os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def ro_open(path, flags, *a, **kw):
        if str(path).startswith(str(root)) and flags & writes:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    def ro_mkdir(path, *a, **kw):
        if str(path).startswith(str(root)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


def test_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    data = _ratings(tmp_path / "r.csv")
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    code, _, err = _train(capsys, data, ro / "run")
    assert code == 2 and err.count("\n") == 1 and "read-only file system" in err, err
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("failure", ["oserror", "safetensors"])
def test_full_disk_is_one_line_and_keeps_the_old_run(tmp_path, capsys, monkeypatch, failure):
    """ENOSPC while the weights are written (an OSError, or safetensors' own error carrying it):
    one line, no temporary file, and an ``--overwrite`` leaves the old run as it was."""
    from safetensors import SafetensorError

    import ncf.checkpoint

    data = _ratings(tmp_path / "r.csv")
    out = tmp_path / "run"
    assert _train(capsys, data, out)[0] == 0
    before = _tree(out)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")  # what a full disk leaves: part of the file
        if failure == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(ncf.checkpoint, "save_file", full)
    code, _, err = _train(capsys, data, out, "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "no space left on the device" in err, err
    assert _tree(out) == before
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / ".run.partial").exists()
