"""Data-parallel training with 2 gloo processes on this CPU (torchrun, DDP).

- both ranks end with identical parameters, equal (float tolerance) to one process at twice
  the batch (SGD, mean loss), with dense and with sparse (row) gradients of the tables;
- ``ncf train --nproc 2`` on ML-100K reaches the single-process HR@10 within noise and
  writes one run directory;
- ``--resume`` of a 2-process run gives the uninterrupted run's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ncf.train import distributed

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=HERE.parents[1])
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


@pytest.mark.parametrize("sparse", ["off", "on"])  # dense all-reduce; sparse (gloo) of the tables' rows
def test_ranks_agree_and_equal_one_process_at_double_batch(tmp_path, sparse):
    opt = f'sparse="{sparse}"'
    _run(_torchrun(2, str(HERE / "ddp_worker.py"), str(tmp_path / "two"), "batch_size=24", "epochs=2", opt))
    _run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "one"), "batch_size=48", "epochs=2", opt])
    r0, r1 = (load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in (0, 1))
    one = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    assert r0.keys() == r1.keys() == one.keys()
    moved = False
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
        torch.testing.assert_close(r0[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    torch.manual_seed(0)  # the worker's initial weights, to check that training moved them
    from ncf.models.neumf import NeuMF

    init = NeuMF(80, 60, 4, (16, 8)).state_dict()
    moved = any(not torch.allclose(init[k], one[k]) for k in one)
    assert moved
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world"] == 2 and two["processes"] == 2
    assert not (tmp_path / "one" / "rank1.safetensors").exists()


def test_two_processes_reach_single_process_hr_on_ml100k(ml100k_dir, tmp_path):
    common = ["--dataset", "ml-100k", "--model", "neumf", "--epochs", "4", "--batch-size", "2048",
              "--lr", "0.005", "--patience", "0", "--device", "cpu", "--quiet"]
    _run([sys.executable, "-m", "ncf", "train", *common, "--out", str(tmp_path / "one")], timeout=600)
    res = _run([sys.executable, "-m", "ncf", "train", *common, "--nproc", "2", "--out", str(tmp_path / "two")],
               timeout=600)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert res.stderr.count("run written to") + res.stdout.count("run written to") == 1  # rank 0 only
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]
    # 943 test users: one standard error of HR@10 is about 0.016
    assert one["test"]["hr@10"] > 0.3 and abs(two["test"]["hr@10"] - one["test"]["hr@10"]) < 0.05, (one, two)


def _ratings_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [(u, i, 1, t) for u in range(60) for t, i in enumerate(rng.choice(40, 10, replace=False))]
    path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return path


def test_resume_of_a_two_process_run(tmp_path):
    data = _ratings_file(tmp_path / "ratings.tsv")
    common = ["--dataset", str(data), "--model", "gmf", "--batch-size", "64", "--lr", "0.02",
              "--patience", "0", "--device", "cpu", "--quiet", "--nproc", "2"]
    _run([sys.executable, "-m", "ncf", "train", *common, "--epochs", "3", "--out", str(tmp_path / "a")])
    _run([sys.executable, "-m", "ncf", "train", *common, "--epochs", "2", "--out", str(tmp_path / "b")])
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg["train"]["epochs"] = 3
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "b" / "summary.json").unlink()
    _run([sys.executable, "-m", "ncf", "train", "--resume", str(tmp_path / "b"), "--quiet", "--nproc", "2"])
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["epochs_run"] == 3 and b["processes"] == 2
    assert a["test"] == pytest.approx(b["test"]) and a["valid"] == pytest.approx(b["valid"])


def test_launch_command_and_argument_errors(monkeypatch):
    cmd = distributed.launch_command(3, ["train", "--dataset", "x"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3", "-m", "ncf",
                       "train", "--dataset", "x"]
    assert distributed.without_nproc(["train", "--nproc", "2", "--epochs", "3", "--nproc=4"]) == \
        ["train", "--epochs", "3"]
    with pytest.raises(ValueError, match="--nproc must be >= 1"):
        distributed.launch_command(0, [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.setup(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        distributed.env_world()
