"""One training run end to end: dataset -> model -> trainer -> run directory.

This is what ``ncf train`` calls; ``ncf compare`` and the benchmarks call it too.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ncf.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_config,
    load_model,
    save_model,
    save_run_data,
)
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.split import Dataset
from ncf.models import MODELS, NeuMF, get_model_class
from ncf.train import distributed
from ncf.train.trainer import Trainer, console


def build(cfg: TrainConfig, dataset: Dataset):
    """A fresh model for ``dataset``; models that need more than the sizes (side features)
    define ``from_dataset(dataset, **params)``."""
    cls = get_model_class(cfg.model)
    params = cfg.model_params(cls)
    torch.manual_seed(cfg.seed)  # initial weights are part of what the seed fixes
    if hasattr(cls, "from_dataset"):
        return cls.from_dataset(dataset, **params)
    return cls.from_params(dataset.n_users, dataset.n_items, **params)


def _write_header(out: Path, data_cfg: DataConfig, cfg: TrainConfig, model, dataset: Dataset) -> None:
    if not distributed.is_main():  # rank 0 alone writes the run directory
        return
    out.mkdir(parents=True, exist_ok=True)
    save_run_data(out, dataset.train.user_map, dataset.train.item_map, dataset.train.matrix, dataset.item_info)
    atomic_write_json(out / "config.json", {
        "format": 1, "model": model.name, "model_params": model.hparams(),
        "n_users": model.n_users, "n_items": model.n_items,
        "train": cfg.to_dict(), "data": data_cfg.to_dict(), "dataset_report": dataset.report,
    })


def train(data_cfg: DataConfig, cfg: TrainConfig, out: Path | None, dataset: Dataset | None = None,
          progress: bool = True, init_items: Path | None = None, on_epoch=None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``data_cfg``'s dataset, writing the run to ``out``.

    ``init_items``: a run directory (item2vec) whose item vectors initialise GMF / NeuMF item
    embeddings, matched by raw id (:mod:`ncf.train.warmstart`); reported in ``init_items.json``.
    ``on_epoch``: the Trainer's per-epoch hook (SGD models; see ``Trainer.on_epoch``)."""
    dataset = dataset or load_dataset(data_cfg)
    cfg = cfg.resolved(dataset.train.nnz)
    if cfg.pretrain:
        if cfg.model != "neumf":
            raise ValueError("--pretrain applies to neumf only")
        if init_items is not None:
            raise ValueError("--init-items does not combine with --pretrain")
        return _train_pretrained(data_cfg, cfg, out, dataset, progress, resume=False)
    model = build(cfg, dataset)
    warm = None
    if init_items is not None:
        from ncf.train.warmstart import init_item_embeddings

        warm = init_item_embeddings(model, dataset.train.item_map, Path(init_items))
        console.print(f"item embeddings ({', '.join(warm['tables'])}) initialised from {init_items} for "
                      f"{warm['initialised']} items; {warm['random']} keep their random init")
    if out is not None:
        _write_header(Path(out), data_cfg, cfg, model, dataset)
        if warm is not None:
            atomic_write_json(Path(out) / "init_items.json", warm)
    summary = _fit(model, dataset, cfg, data_cfg, out, progress, resume=False, on_epoch=on_epoch)
    if warm is not None and summary is not None:  # None: a non-zero distributed rank
        summary["init_items"] = warm
        if out is not None:
            atomic_write_json(Path(out) / "summary.json", summary)
    return summary


def _fit(model, dataset, cfg, data_cfg, out, progress, resume, on_epoch=None):
    if not model.trainable:
        t0 = time.perf_counter()
        model.fit(dataset, cfg)
        elapsed = time.perf_counter() - t0
        trainer = Trainer(model, dataset, cfg, out, progress=progress)
        trainer.elapsed = elapsed
        if dataset.valid is not None:
            from ncf.eval.evaluator import evaluate

            trainer.best = {"epoch": None, "score": None, "valid": evaluate(model, dataset.valid, "sampled")}
        if out is not None:
            save_model(Path(out), model, _extra(cfg, data_cfg, dataset))
        return trainer.finish()
    trainer = Trainer(model, dataset, cfg, out, progress=progress)
    trainer.extra_config = lambda: _extra(cfg, data_cfg, dataset)
    trainer.on_epoch = on_epoch
    return trainer.fit(resume=resume)


def _extra(cfg: TrainConfig, data_cfg: DataConfig, dataset: Dataset) -> dict[str, Any]:
    return {"train": cfg.to_dict(), "data": data_cfg.to_dict(), "dataset_report": dataset.report}


def _train_pretrained(data_cfg, cfg, out, dataset, progress, resume):
    """The paper's pre-training: GMF and MLP trained alone (sub-runs ``pretrain-gmf`` and
    ``pretrain-mlp``), fused with ``alpha``, then NeuMF fine-tuned (``finetune_optimizer``, SGD as in the paper,
    at ``finetune_lr``); the fused model before fine-tuning competes on validation as epoch 0."""
    subs = {}
    for name in ("gmf", "mlp"):
        sub_cfg = TrainConfig.from_dict({**cfg.to_dict(), "model": name, "pretrain": False,
                                         "pretrained_gmf": "", "pretrained_mlp": ""})
        sub_out = Path(out) / f"pretrain-{name}" if out else None
        given = getattr(cfg, f"pretrained_{name}")
        source = sub_out  # the run directory the model is loaded from (None: trained in memory)
        if sub_out is None and not given:
            console.print(f"[bold]pre-training {name} (in memory)")
            subs[name] = build(sub_cfg, dataset)
            _fit(subs[name], dataset, sub_cfg, data_cfg, None, progress, resume=False)  # best epoch's weights
        elif sub_out is not None and (sub_out / "summary.json").exists():
            console.print(f"pre-trained {name} found in {sub_out}")
        elif given:
            _check_pretrained(Path(given), name, dataset)
            if sub_out is None:
                source = Path(given)
            else:
                shutil.copytree(given, sub_out, dirs_exist_ok=True)  # the run directory stays self-contained
                console.print(f"pre-trained {name}: {given}, copied to {sub_out}")
        elif sub_out is not None and resume and (sub_out / "state.safetensors").exists():
            resume_run(sub_out, progress=progress)
        else:
            console.print(f"[bold]pre-training {name}")
            train(data_cfg, sub_cfg, sub_out, dataset, progress)
        if source is not None:
            subs[name] = load_model(source)
    model = NeuMF.from_pretrained(subs["gmf"], subs["mlp"], cfg.alpha)
    fine = TrainConfig.from_dict({**cfg.to_dict(), "optimizer": cfg.finetune_optimizer,
                                  "lr": cfg.finetune_lr or cfg.lr})
    if out is not None and not resume:
        _write_header(Path(out), data_cfg, cfg, model, dataset)
    resumable = resume and out is not None and (Path(out) / "state.safetensors").exists()
    trainer = Trainer(model, dataset, fine, out, progress=progress)
    trainer.extra_config = lambda: _extra(cfg, data_cfg, dataset)
    if not resumable:
        # the fused model before any fine-tuning is "epoch 0": validation keeps it where
        # fine-tuning does not improve on it
        trainer.evaluate_start()
    return trainer.fit(resume=resumable)


def _check_pretrained(run: Path, name: str, dataset: Dataset) -> None:
    """``run`` is a finished ``name`` run on exactly this dataset's training data (the same ids
    and the same training interactions: a model that saw the validation items would make the
    validation choices worthless)."""
    from ncf.checkpoint import load_config, load_run_maps, load_train_matrix

    if not (run / "summary.json").exists():
        raise CheckpointError(f"{run}: not a finished run directory (no summary.json) for --pretrained-{name}")
    model = load_config(run).get("model")
    if model != name:
        raise CheckpointError(f"{run}: --pretrained-{name} needs a {name} run, this one is {model!r}")
    users, items = load_run_maps(run)
    if users != dataset.train.user_map or items != dataset.train.item_map:
        raise CheckpointError(f"{run}: its user/item ids differ from this dataset's ({len(users)} users / "
                              f"{len(items)} items against {dataset.n_users} / {dataset.n_items})")
    if (load_train_matrix(run) != dataset.train.matrix).nnz:
        raise CheckpointError(f"{run}: trained on other interactions than this run's training set "
                              "(another split, seed or --no-valid?)")


def resume_run(out: Path, progress: bool = True) -> dict[str, Any]:
    """Continue an interrupted run from its last completed epoch."""
    out = Path(out)
    if not out.is_dir():
        raise CheckpointError(f"{out}: no such run directory")
    cfg_json = load_config(out)
    try:
        cfg = TrainConfig.from_dict(cfg_json["train"])
        data_cfg = DataConfig(**cfg_json["data"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{out / 'config.json'}: cannot resume ({e})") from None
    dataset = load_dataset(data_cfg)
    if (out / "summary.json").exists():
        console.print(f"{out} already finished; evaluating the saved best model")
    if cfg.pretrain:
        return _train_pretrained(data_cfg, cfg, out, dataset, progress, resume=True)
    model = build(cfg, dataset)
    if not (out / "state.safetensors").exists():
        return _fit(model, dataset, cfg, data_cfg, out, progress, resume=False)
    return _fit(model, dataset, cfg, data_cfg, out, progress, resume=True)


__all__ = ["train", "resume_run", "MODELS"]
