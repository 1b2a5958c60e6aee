"""Run by tests/train/test_distributed.py, as ``torchrun --nproc-per-node N ddp_worker.py OUT
[KEY=VALUE ...]`` or as a plain single process: trains NeuMF on a small synthetic dataset
with the Trainer and saves each rank's final parameters to ``OUT/rank{r}.safetensors``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# isort: off
import ncf  # noqa: F401  (before torch: sets the OpenMP wait policy)
# isort: on
import numpy as np
import torch
from safetensors.torch import save_file

from ncf.config import TrainConfig
from ncf.data.interactions import Interactions
from ncf.data.split import Dataset, HoldOut, leave_one_out, sample_candidates
from ncf.models import get_model_class
from ncf.train import distributed
from ncf.train.trainer import Trainer


def synthetic(seed: int = 0, n_users: int = 80, n_items: int = 60) -> Dataset:
    """Two user groups liking two item groups (learnable), with leave-one-out holdouts."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        pool = np.arange((u % 2) * n_items // 2, (u % 2 + 1) * n_items // 2)
        chosen = rng.choice(pool, size=12, replace=False)
        users += [u] * len(chosen)
        items += chosen.tolist()
    full = Interactions.from_raw(np.array(users), np.array(items), np.arange(len(users)))
    train, tu, ti, _ = leave_one_out(full, rng)
    train, vu, vi, _ = leave_one_out(train, rng)
    seen = full.matrix
    return Dataset("synthetic", train, HoldOut(tu, ti, sample_candidates(seen, tu, ti, 20, rng)),
                   HoldOut(vu, vi, sample_candidates(seen, vu, vi, 20, rng)), full.nnz)


def main(out: Path, overrides: dict) -> None:
    ds = synthetic()
    cfg = TrainConfig(**{"model": "neumf", "factors": 4, "layers": (16, 8), "epochs": 2, "batch_size": 64,
                         "optimizer": "sgd", "lr": 0.5, "device": "cpu", "patience": 0, "threads": 1, "dropout": 0.0,
                         **overrides})
    cls = get_model_class(cfg.model)
    torch.manual_seed(cfg.seed)
    model = cls.from_params(ds.n_users, ds.n_items, **cfg.model_params(cls))
    trainer = Trainer(model, ds, cfg, None, progress=False)
    last = {}
    finish = trainer.finish

    def keep_last_then_finish():  # rank 0's finish restores its best epoch: compare the last one
        last.update({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()})
        return finish()

    trainer.finish = keep_last_then_finish
    summary = trainer.fit()
    out.mkdir(parents=True, exist_ok=True)
    r = distributed.rank()
    save_file(last, str(out / f"rank{r}.safetensors"))
    if summary is not None:
        (out / "summary.json").write_text(json.dumps({**summary, "world": trainer.world}))
    distributed.cleanup()


if __name__ == "__main__":
    kv = dict(a.split("=", 1) for a in sys.argv[2:])
    main(Path(sys.argv[1]), {k: json.loads(v) for k, v in kv.items()})
