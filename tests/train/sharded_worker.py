"""Run by tests/train/test_sharded.py as ``torchrun --nproc-per-node N sharded_worker.py OUT [KEY=VALUE ...]``:
trains a model with TorchRec-sharded tables (:class:`ncf.train.sharded.ShardedTrainer`) on a
small synthetic dataset with two equal tables (80 users, 80 items) into the run directory
``OUT/run``, and writes ``OUT/rank{r}.json``: the bytes this rank holds and the logits the
sharded model gives for fixed probe pairs (every rank the same probes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# isort: off
import ncf  # noqa: F401  (before torch: sets the OpenMP wait policy)
# isort: on
import torch

from ncf.checkpoint import atomic_write_json, save_run_data
from ncf.config import TrainConfig
from ncf.train import distributed
from ncf.train.run import build
from ncf.train.sharded import ShardedTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_worker import synthetic  # noqa: E402


def main(out: Path, overrides: dict) -> None:
    ds = synthetic(n_users=80, n_items=80)
    cfg = TrainConfig(**{"model": "neumf", "factors": 4, "layers": (16, 8), "epochs": 2, "batch_size": 64,
                         "lr": 0.01, "device": "cpu", "patience": 0, "threads": 1, "dropout": 0.0,
                         "shard_tables": True, **overrides})
    model = build(cfg, ds)
    run = out / "run"
    if distributed.env_world() == 1 or int(__import__("os").environ["RANK"]) == 0:
        run.mkdir(parents=True, exist_ok=True)
        save_run_data(run, ds.train.user_map, ds.train.item_map, ds.train.matrix, None)
        atomic_write_json(run / "config.json", {"format": 1, "model": model.name, "model_params": model.hparams(),
                                                "n_users": model.n_users, "n_items": model.n_items,
                                                "train": cfg.to_dict()})
    trainer = ShardedTrainer(model, ds, cfg, run, progress=False)
    summary = trainer.fit()
    g = torch.Generator().manual_seed(1)
    users, items = torch.randint(0, 80, (50,), generator=g), torch.randint(0, 80, (50,), generator=g)
    trainer.net.eval()
    with torch.no_grad():
        logits = trainer.net(users, items)[0]
    r = distributed.rank()
    (out / f"rank{r}.json").write_text(json.dumps({
        "bytes": trainer.local_bytes(), "logits": logits.tolist(), "users": users.tolist(), "items": items.tolist(),
        "shards": {s: [(sh.metadata.shard_offsets, sh.metadata.shard_sizes) for sh in st.local_shards()]
                   for s, st in trainer._table_tensors().items()},
        "summary": summary}))
    distributed.cleanup()


if __name__ == "__main__":
    kv = dict(a.split("=", 1) for a in sys.argv[2:])
    main(Path(sys.argv[1]), {k: json.loads(v) for k, v in kv.items()})
