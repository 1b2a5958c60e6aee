"""Embedding tables sharded with TorchRec (``ncf train --shard-tables``), 2 gloo processes on CPU.

- each rank holds only its shards: for two equal tables, half the table bytes per rank
  (table-wise: one table each; column-wise: half the columns of both);
- the sharded model's logits equal the converted ordinary model's (same math, same weights),
  and the converted run directory works with ``ncf evaluate`` / ``ncf recommend``;
- ``--resume`` of a sharded run gives the uninterrupted run's shards and metrics;
- ML-100K quality within noise of the DDP path (slow);
- without TorchRec the flag says what to install; conversion needs no TorchRec.

The torchrun tests are skipped where the ``scale`` extra (torchrec, fbgemm-gpu-cpu) is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ncf.checkpoint import CheckpointError, load_model, save_tensors
from ncf.train import shardckpt

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
HAVE_TORCHREC = importlib.util.find_spec("torchrec") is not None and importlib.util.find_spec("fbgemm_gpu") is not None
needs_torchrec = pytest.mark.skipif(not HAVE_TORCHREC, reason="the scale extra is not installed "
                                    "(pip install 'ncf[scale]': torchrec, fbgemm-gpu-cpu)")


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=HERE.parents[1])
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


@needs_torchrec
@pytest.mark.parametrize("sharding", ["table_wise", pytest.param("column_wise", marks=pytest.mark.slow)])
def test_each_rank_holds_half_and_the_math_is_the_ordinary_models(tmp_path, sharding):
    # GMF 8 + MLP 8 columns a table: column-wise blocks of 8 (FBGEMM wants multiples of 4)
    _run(_torchrun(2, str(HERE / "sharded_worker.py"), str(tmp_path), f'sharding="{sharding}"', "factors=8"))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = 2 * 80 * (8 + 8) * 4  # two tables of 80 rows, 16 columns, fp32
    for r in ranks:  # each rank holds exactly half of the tables
        assert r["bytes"]["tables"] == total // 2, (sharding, r["bytes"], r["shards"])
    if sharding == "table_wise":
        assert sorted(len(r["shards"]["user"]) for r in ranks) == [0, 1]
    else:
        assert all(len(r["shards"][s]) == 1 and r["shards"][s][0][1] == [80, 8]
                   for r in ranks for s in ("user", "item"))
    index = shardckpt.read_index(tmp_path / "run")
    assert index["world"] == 2 and {s["rank"] for t in index["tables"].values() for s in t["shards"]} == {0, 1}
    # the run was converted at the end: an ordinary model with the same logits as the shards
    model = load_model(tmp_path / "run")
    for r in ranks:
        with torch.no_grad():
            ref = model(torch.tensor(r["users"]), torch.tensor(r["items"]))
        np.testing.assert_allclose(r["logits"], ref.numpy(), rtol=1e-5, atol=1e-6)
    assert ranks[0]["summary"]["processes"] == 2 and ranks[1]["summary"] is None
    # the sampled test protocol over the shards equals the ordinary evaluator's on the converted model
    sys.path.insert(0, str(HERE))
    from ddp_worker import synthetic

    from ncf.eval.evaluator import evaluate

    ds = synthetic(n_users=80, n_items=80)
    assert evaluate(model, ds.test, "sampled") == pytest.approx(ranks[0]["summary"]["test"])


@needs_torchrec
@pytest.mark.slow  # four torchrun launches: about a minute on an idle 2-core machine
def test_resume_of_a_sharded_run_equals_an_uninterrupted_one(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(u, i, 1, t) for u in range(60) for t, i in enumerate(rng.choice(40, 10, replace=False))]
    data = tmp_path / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    common = ["--dataset", str(data), "--model", "neumf", "--factors", "4", "--layers", "16,8", "--batch-size", "64",
              "--lr", "0.01", "--dropout", "0.1", "--patience", "0", "--device", "cpu", "--quiet", "--nproc", "2",
              "--shard-tables"]
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
    for r in (0, 1):  # the last epoch's shards, fused optimizer state and tower: equal
        sa = load_file(str(shardckpt.rank_file(tmp_path / "a", "state", r)))
        sb = load_file(str(shardckpt.rank_file(tmp_path / "b", "state", r)))
        assert sa.keys() == sb.keys() and any(k.startswith("opt.") for k in sa)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb)
    # each rank read only its users (ncf.data.rankload): per-user split draws, the ranks' training rows
    assert json.loads((tmp_path / "b" / "config.json").read_text())["data"]["split_draws"] == "per_user"
    assert all(shardckpt.train_file(tmp_path / "b", r).exists() for r in (0, 1))
    # the converted run directory serves the ordinary commands; `ncf evaluate` reads the whole file
    # and draws the same candidates; the full ranking the ranks did on their users is the same
    out = _run([sys.executable, "-m", "ncf", "evaluate", str(tmp_path / "b"), "--json"]).stdout
    assert json.loads(out)["metrics"]["hr@10"] == pytest.approx(b["test"]["hr@10"])
    out = _run([sys.executable, "-m", "ncf", "evaluate", str(tmp_path / "b"), "--protocol", "full", "--json"]).stdout
    assert json.loads(out)["metrics"] == pytest.approx(b["test_full"])
    rec = json.loads(_run([sys.executable, "-m", "ncf", "recommend", str(tmp_path / "b"), "--user", "3", "-k", "5",
                           "--json"]).stdout)
    assert len(rec["items"]) == 5 and not rec["fallback"]


@needs_torchrec
@pytest.mark.slow
def test_ml100k_quality_within_noise_of_the_ddp_path(ml100k_dir, tmp_path):
    common = ["--dataset", "ml-100k", "--model", "neumf", "--epochs", "4", "--batch-size", "2048",
              "--lr", "0.005", "--patience", "0", "--device", "cpu", "--quiet", "--nproc", "2"]
    _run([sys.executable, "-m", "ncf", "train", *common, "--out", str(tmp_path / "ddp")], timeout=900)
    _run([sys.executable, "-m", "ncf", "train", *common, "--shard-tables", "--out", str(tmp_path / "sh")], timeout=900)
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    sh = json.loads((tmp_path / "sh" / "summary.json").read_text())
    assert sh["sharded"]["plan"] and sh["processes"] == 2
    # 943 test users: one standard error of HR@10 is about 0.016
    assert ddp["test"]["hr@10"] > 0.3 and sh["test"]["hr@10"] > ddp["test"]["hr@10"] - 0.05, (ddp, sh)


def test_without_torchrec_the_flag_says_what_to_install(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchrec" else real(name, *a))
    from ncf.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "x", "--out", str(tmp_path / "r"), "--shard-tables"])
    assert e.value.code == 2
    assert "pip install 'ncf[scale]'" in capsys.readouterr().err


def _write_sharded(run: Path, tables: dict, dense: dict, world: int, split: str) -> None:
    """A sharded checkpoint by hand: tables split by rows or columns over ``world`` ranks."""
    files = [{} for _ in range(world)]
    index_tables = {}
    for name, (full, parts) in tables.items():
        shards = []
        for r in range(world):
            if split == "rows":
                lo, hi = r * len(full) // world, (r + 1) * len(full) // world
                t, row, col = full[lo:hi], lo, 0
            else:
                lo, hi = r * full.shape[1] // world, (r + 1) * full.shape[1] // world
                t, row, col = full[:, lo:hi], 0, lo
            files[r][shardckpt.shard_key(name, row, col)] = t
            shards.append({"rank": r, "row": row, "col": col, "rows": t.shape[0], "cols": t.shape[1]})
        index_tables[name] = {"rows": full.shape[0], "dim": full.shape[1], "parts": parts, "shards": shards}
    files[0].update({f"dense.{k}": v for k, v in dense.items()})
    shardckpt.write_index(run, {"world": world, "tables": index_tables, "dense": list(dense)})
    for r in range(world):
        save_tensors(shardckpt.rank_file(run, "best", r), files[r])


@pytest.mark.parametrize("split", ["rows", "cols"])
def test_conversion_assembles_any_layout_without_torchrec(tmp_path, split):
    from ncf.checkpoint import atomic_write_json
    from ncf.models.neumf import NeuMF

    torch.manual_seed(0)
    ref = NeuMF(7, 5, 2, (8, 4))
    sd = ref.state_dict()
    atomic_write_json(tmp_path / "config.json", {"format": 1, "model": "neumf", "model_params": ref.hparams(),
                                                 "n_users": 7, "n_items": 5, "train": {"shard_tables": True}})
    tables = {s: (torch.cat([sd[f"gmf.{s}_emb.weight"], sd[f"mlp.tower.{s}_emb.weight"]], 1),
                  [[f"gmf.{s}_emb.weight", 0, 2], [f"mlp.tower.{s}_emb.weight", 2, 4]]) for s in ("user", "item")}
    dense = {k: v for k, v in sd.items() if "_emb" not in k}
    _write_sharded(tmp_path, tables, dense, 3 if split == "rows" else 2, split)
    model = shardckpt.convert(tmp_path)
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert json.loads((tmp_path / "config.json").read_text())["train"] == {"shard_tables": True}
    assert torch.equal(load_model(tmp_path).state_dict()["predict.weight"], sd["predict.weight"])
    # a missing shard is named
    os.remove(shardckpt.rank_file(tmp_path, "best", 1))
    with pytest.raises(CheckpointError, match="best-rank1.safetensors: missing"):
        shardckpt.convert(tmp_path)


@needs_torchrec
def test_refusals_before_any_process_group():
    sys.path.insert(0, str(HERE))
    from ddp_worker import synthetic

    from ncf.config import TrainConfig
    from ncf.train.run import build
    from ncf.train.sharded import ShardedTrainer

    ds = synthetic()
    for cfg, match in [(TrainConfig(model="bpr", loss="bpr", shard_tables=True), "supports gmf, mlp, neumf"),
                       (TrainConfig(model="gmf", loss="bpr", shard_tables=True), "--loss bce"),
                       (TrainConfig(model="gmf", shard_tables=True, device="cpu"), "runs under torchrun")]:
        model = build(cfg, ds)
        assert all(p.device.type == "meta" for p in model.parameters())  # a description: no table memory
        with pytest.raises(ValueError, match=match):
            ShardedTrainer(model, ds, cfg, None, progress=False)
    with pytest.raises(ValueError, match="does not combine with pretrain"):
        TrainConfig(model="neumf", shard_tables=True, pretrain=True)
    with pytest.raises(ValueError, match="table_optimizer must be one of"):
        TrainConfig(shard_tables=True, table_optimizer="lamb")
