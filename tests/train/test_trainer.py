import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ncf.checkpoint import CheckpointError, load_model
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig
from ncf.eval.evaluator import evaluate
from ncf.train.run import partial_dir, resume_run, train


def small_cfg(**kw):
    base = dict(model="neumf", factors=4, layers=(16, 8), epochs=4, batch_size=512, lr=0.01,
                device="cpu", patience=0)
    return TrainConfig(**{**base, **kw})


def test_run_directory_contents_and_best_epoch(ml100k, tmp_path):
    out = tmp_path / "run"
    summary = train(DataConfig("ml-100k"), small_cfg(), out, dataset=ml100k, progress=False)
    for f in ("config.json", "model.safetensors", "idmap.json", "train.safetensors", "metrics.jsonl",
              "summary.json", "curves.png", "state.safetensors", "items.json"):
        assert (out / f).exists(), f
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    best = max(lines, key=lambda r: r["valid"]["ndcg@10"])
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["best_epoch"] == best["epoch"] == summary["best_epoch"]
    assert on_disk["valid"] == best["valid"]
    for split in ("valid", "test"):
        assert set(on_disk[split]) >= {"hr@10", "ndcg@10"}
    assert on_disk["train_seconds"] > 0
    # test metrics are those of the best-validation weights, not the last epoch's
    model = load_model(out)
    assert evaluate(model, ml100k.test, "sampled") == pytest.approx(on_disk["test"])
    assert 0.2 < on_disk["test"]["hr@10"] <= 1.0


def test_early_stopping_uses_validation_only(ml100k, tmp_path):
    cfg = small_cfg(epochs=30, patience=2, lr=0.05, batch_size=2048)
    summary = train(DataConfig("ml-100k"), cfg, tmp_path / "r", dataset=ml100k, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs_run"] == len(lines) < 30
    assert len(lines) - summary["best_epoch"] == 2  # stopped after `patience` epochs without improvement
    assert all("test" not in r for r in lines)


def test_seeded_runs_are_deterministic(ml100k):
    a = train(DataConfig("ml-100k"), small_cfg(epochs=2), None, dataset=ml100k, progress=False)
    b = train(DataConfig("ml-100k"), small_cfg(epochs=2), None, dataset=ml100k, progress=False)
    c = train(DataConfig("ml-100k"), small_cfg(epochs=2, seed=1), None, dataset=ml100k, progress=False)
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert a["valid"] != c["valid"]


@pytest.mark.parametrize("loss,optimizer", [("bpr", "adam"), ("bce", "sgd"), ("bce", "adagrad")])
def test_losses_and_optimizers_train(ml100k, loss, optimizer):
    lr = 0.5 if optimizer == "sgd" else 0.02
    s = train(DataConfig("ml-100k"), small_cfg(epochs=2, loss=loss, optimizer=optimizer, lr=lr), None,
              dataset=ml100k, progress=False)
    assert s["valid"]["hr@10"] > 0.2  # random ranking of 1 + 99 gives 0.10


def _wait_for_lines(path, n, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError("training did not reach the epoch in time")


def test_resume_after_kill_9(ml100k_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ncf", "train", "--dataset", "ml-100k", "--model", "gmf", "--epochs", "6",
           "--batch-size", "256", "--patience", "0", "--device", "cpu", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    work = partial_dir(out)  # the run is written beside `out` and renamed into place when complete
    _wait_for_lines(work / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not (work / "summary.json").exists()
    done = len((work / "metrics.jsonl").read_text().splitlines())
    assert 2 <= done < 6
    res = subprocess.run([sys.executable, "-m", "ncf", "train", "--resume", str(out), "--quiet"],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 7))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 6 and summary["test"]["hr@10"] > 0.2
    assert not work.exists()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("resumable", [True, False])
def test_a_run_stopped_by_its_hook_keeps_resumable_state_unless_told_not_to(ml100k, tmp_path, resumable):
    def stop_after_two(record):
        if record["epoch"] == 2:
            raise _Stop  # what ncf tune's pruner does from inside the epoch hook
        return False

    out = tmp_path / "r"
    with pytest.raises(_Stop):
        train(DataConfig("ml-100k"), small_cfg(model="gmf", epochs=4), out, dataset=ml100k, progress=False,
              on_epoch=stop_after_two, resumable=resumable)
    assert not out.exists()
    assert (partial_dir(out) / "state.safetensors").exists() == resumable


def test_resumed_run_matches_uninterrupted(ml100k, tmp_path):
    """Stopping after epoch 2 and resuming gives the same weights as 4 epochs straight."""
    cfg = small_cfg(model="gmf", epochs=4)
    train(DataConfig("ml-100k"), cfg, tmp_path / "a", dataset=ml100k, progress=False)
    train(DataConfig("ml-100k"), small_cfg(model="gmf", epochs=2), tmp_path / "b", dataset=ml100k, progress=False)
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg_b["train"]["epochs"] = 4
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg_b))
    (tmp_path / "b" / "summary.json").unlink()
    resume_run(tmp_path / "b", progress=False)
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["test"] == pytest.approx(b["test"]) and a["best_epoch"] == b["best_epoch"]


def test_corrupt_and_mismatched_checkpoints(ml100k, tmp_path):
    out = tmp_path / "r"
    train(DataConfig("ml-100k"), small_cfg(model="gmf", epochs=1), out, dataset=ml100k, progress=False)
    good = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated"):
        load_model(out)
    (out / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(out)
    (out / "model.safetensors").write_bytes(good)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_params"]["factors"] = 16
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(out)
    with pytest.raises(CheckpointError, match="no such run directory"):
        load_model(tmp_path / "missing")


def test_no_pickle_in_run_directory(ml100k, tmp_path):
    train(DataConfig("ml-100k"), small_cfg(model="gmf", epochs=1), tmp_path / "r", dataset=ml100k, progress=False)
    for f in (tmp_path / "r").iterdir():
        assert f.suffix in {".json", ".jsonl", ".safetensors", ".png"}, f
    # weights load with safetensors alone
    from safetensors.torch import load_file

    assert all(isinstance(v, torch.Tensor) for v in load_file(str(tmp_path / "r" / "model.safetensors")).values())


def test_config_refuses_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"model": "gmf", "epoch": 3})
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=-1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="rmsprop")


def test_pretrain_trains_gmf_and_mlp_then_fuses(ml100k, tmp_path):
    out = tmp_path / "p"
    s = train(DataConfig("ml-100k"), small_cfg(epochs=2, pretrain=True), out, dataset=ml100k, progress=False)
    for sub in ("pretrain-gmf", "pretrain-mlp"):
        assert json.loads((out / sub / "summary.json").read_text())["epochs_run"] == 2
    assert json.loads((out / "config.json").read_text())["model"] == "neumf"
    assert load_model(out).name == "neumf" and s["test"]["hr@10"] > 0.2
    with pytest.raises(ValueError, match="applies to neumf only"):
        train(DataConfig("ml-100k"), small_cfg(model="gmf", pretrain=True), None, dataset=ml100k)


def test_pretrain_keeps_the_fused_model_when_fine_tuning_only_hurts(ml100k, tmp_path):
    """The fused model is validated as epoch 0; a fine-tuning that wrecks it (SGD at lr 1e4)
    must leave the un-fine-tuned mixture as the result, with its own test metrics."""
    from ncf.models import NeuMF

    out = tmp_path / "p"
    s = train(DataConfig("ml-100k"), small_cfg(epochs=2, pretrain=True, finetune_optimizer="sgd",
                                               finetune_lr=1e4), out, dataset=ml100k, progress=False)
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(r["valid"]["ndcg@10"] < s["valid"]["ndcg@10"] for r in history)
    assert s["best_epoch"] == 0
    fused = NeuMF.from_pretrained(load_model(out / "pretrain-gmf"), load_model(out / "pretrain-mlp"), 0.5)
    assert evaluate(fused, ml100k.test, "sampled") == pytest.approx(s["test"])
    assert evaluate(fused, ml100k.valid, "sampled") == pytest.approx(s["valid"])
    assert json.loads((out / "config.json").read_text())["train"]["finetune_lr"] == 1e4
    with pytest.raises(ValueError, match="finetune_optimizer"):
        small_cfg(pretrain=True, finetune_optimizer="lbfgs")


def test_without_a_run_directory_test_is_for_the_best_epoch_too(ml100k, tmp_path):
    """Library use with ``out=None``: the best-validation weights are kept in memory, so the
    summary's test figures are those of the best epoch (as with a run directory), and
    pre-training trains GMF and MLP in memory."""
    cfg = small_cfg(epochs=30, patience=1, lr=0.05, batch_size=2048)
    on_disk = train(DataConfig("ml-100k"), cfg, tmp_path / "r", dataset=ml100k, progress=False)
    in_memory = train(DataConfig("ml-100k"), cfg, None, dataset=ml100k, progress=False)
    assert in_memory["best_epoch"] == on_disk["best_epoch"] < in_memory["epochs_run"]
    assert in_memory["test"] == pytest.approx(on_disk["test"]) and in_memory["valid"] == on_disk["valid"]
    hurt = small_cfg(epochs=2, pretrain=True, finetune_optimizer="sgd", finetune_lr=1e4)
    fused_on_disk = train(DataConfig("ml-100k"), hurt, tmp_path / "p", dataset=ml100k, progress=False)
    fused_in_memory = train(DataConfig("ml-100k"), hurt, None, dataset=ml100k, progress=False)
    assert fused_in_memory["best_epoch"] == fused_on_disk["best_epoch"] == 0
    assert fused_in_memory["test"] == pytest.approx(fused_on_disk["test"])


def test_pretrain_fuses_given_runs_trained_with_their_own_flags(ml100k, tmp_path):
    """--pretrained-gmf / --pretrained-mlp: finished runs (each with its own flags) are fused,
    copied into the run directory, and not retrained."""
    from ncf.models import NeuMF

    gmf_run, mlp_run = tmp_path / "gmf", tmp_path / "mlp"
    train(DataConfig("ml-100k"), small_cfg(model="gmf", epochs=2, l2=1e-3), gmf_run, dataset=ml100k, progress=False)
    train(DataConfig("ml-100k"), small_cfg(model="mlp", epochs=2, dropout=0.3, lr=0.003), mlp_run, dataset=ml100k,
          progress=False)
    out = tmp_path / "fused"
    s = train(DataConfig("ml-100k"), small_cfg(epochs=1, pretrain=True, pretrained_gmf=str(gmf_run),
                                               pretrained_mlp=str(mlp_run)), out, dataset=ml100k, progress=False)
    for sub, given in (("pretrain-gmf", gmf_run), ("pretrain-mlp", mlp_run)):
        assert (out / sub / "summary.json").read_text() == (given / "summary.json").read_text()
        assert (out / sub / "model.safetensors").read_bytes() == (given / "model.safetensors").read_bytes()
    assert load_model(out / "pretrain-mlp").hparams()["dropout"] == 0.3
    fused = NeuMF.from_pretrained(load_model(gmf_run), load_model(mlp_run), 0.5)
    start = evaluate(fused, ml100k.valid, "sampled")
    assert s["valid"]["ndcg@10"] >= start["ndcg@10"]  # epoch 0 is the fused model itself
    if s["best_epoch"] == 0:
        assert s["valid"] == pytest.approx(start)


def test_pretrained_runs_are_checked(ml100k, tmp_path):
    gmf_run, other = tmp_path / "gmf", tmp_path / "noval"
    train(DataConfig("ml-100k"), small_cfg(model="gmf", epochs=1), gmf_run, dataset=ml100k, progress=False)
    fused = dict(epochs=1, pretrain=True)
    with pytest.raises(CheckpointError, match="needs a mlp run, this one is 'gmf'"):
        train(DataConfig("ml-100k"), small_cfg(**fused, pretrained_mlp=str(gmf_run)), tmp_path / "a",
              dataset=ml100k, progress=False)
    with pytest.raises(CheckpointError, match="no summary.json"):
        train(DataConfig("ml-100k"), small_cfg(**fused, pretrained_gmf=str(tmp_path)), tmp_path / "b",
              dataset=ml100k, progress=False)
    # trained without the validation holdout: it has seen the validation items
    noval = DataConfig("ml-100k", valid=False)
    train(noval, small_cfg(model="gmf", epochs=1), other, progress=False)
    with pytest.raises(CheckpointError, match="other interactions than this run's training set"):
        train(DataConfig("ml-100k"), small_cfg(**fused, pretrained_gmf=str(other)), tmp_path / "c",
              dataset=ml100k, progress=False)
    with pytest.raises(ValueError, match="apply with pretrain"):
        small_cfg(pretrained_gmf=str(gmf_run))
