"""One training run end to end: dataset -> model -> trainer -> run directory.

This is what ``ncf train`` calls; ``ncf compare`` and the benchmarks call it too.

A run is written into a hidden sibling, ``.NAME.partial``, and renamed to ``NAME`` only when
it is complete (``summary.json`` written): a run that fails leaves no half-written ``NAME``;
its partial directory is removed, unless it holds resumable state (``state.safetensors``,
written after every epoch), which ``resume_run(NAME)`` continues and then renames into place.
An existing non-empty ``NAME`` is replaced only with ``overwrite=True``, and only once the
new run is complete (docs/RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncf.checkpoint import (
    CheckpointError,
    atomic_write_json,
    check_config_keys,
    load_config,
    load_model,
    save_model,
    save_run_data,
)
from ncf.config import TrainConfig
from ncf.console import console
from ncf.data.datasets import DATASETS, DataConfig, data_dir, load_dataset
from ncf.data.split import PAD, Dataset, LazyHoldOut
from ncf.errors import ConfigError, DataError, RunExistsError
from ncf.models import MODELS, NeuMF, get_model_class
from ncf.outputs import DISK, OutputLock, prepare_output_dir, writing
from ncf.train import distributed
from ncf.train.trainer import Trainer, resolve_device

PARTIAL = ".partial"  # suffix of the hidden sibling a run is written into until complete


def partial_dir(out: Path) -> Path:
    """Where the run for ``out`` is written until it is complete: ``.NAME.partial`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}{PARTIAL}"


def _target_of(path: Path) -> Path:
    """``NAME`` for ``.NAME.partial`` (a partial directory given by its own path), else ``path``."""
    name = path.name
    if name.startswith(".") and name.endswith(PARTIAL) and len(name) > 1 + len(PARTIAL):
        return path.with_name(name[1:-len(PARTIAL)])
    return path


def check_out(out: Path, overwrite: bool = False) -> None:
    """Refuse an ``out`` that is a file, holds anything but a run, holds a run (unless
    ``overwrite``), holds files ncf did not write beside a run (always: they would be deleted;
    :mod:`ncf.outputs`) or has an interrupted run waiting in its partial directory (unless
    ``overwrite``, which discards it)."""
    out = Path(out)
    try:
        prepare_output_dir(out, "run", overwrite)
    except RunExistsError as e:
        if "already holds a run" in str(e):
            raise RunExistsError(f"--out {out}: already holds a run; pass --overwrite to replace it (the old run "
                                 f"stays until the new one is complete), or `ncf train --resume {out}` to continue "
                                 "it") from None
        raise
    part = partial_dir(out)
    if part.exists() and not overwrite:
        raise RunExistsError(f"{out}: an interrupted run of it waits in {part}: `ncf train --resume {out}` "
                             "continues it, --overwrite discards it")


def _check_trainable(dataset: Dataset) -> None:
    """What would make training fail after it started, said before anything is written."""
    part = dataset.part  # one rank's users: the holdouts' sizes over all ranks
    test = dataset.test  # a given split's test file is not read to train (LazyHoldOut): its own load checks it
    n_test = (part.n_test if part is not None else None if test is None or isinstance(test, LazyHoldOut)
              else len(test))
    n_valid = part.n_valid if part is not None else len(dataset.valid) if dataset.valid is not None else None
    if n_test == 0:
        raise DataError(f"{dataset.name}: no user has 2 or more interactions, so none can be held out for "
                        f"testing ({dataset.n_users} users, {dataset.n_interactions} interactions"
                        f"{_users_read(dataset)})")
    if n_valid == 0:
        raise DataError(f"{dataset.name}: no user has 3 or more interactions, so none can be held out for "
                        f"validation{_users_read(dataset)}; pass --no-valid (no early stopping)")


def _users_read(dataset: Dataset) -> str:
    """Which columns of the file were read as user and item (where the reader says)."""
    from ncf.data.datasets import columns_hint

    return columns_hint(((dataset.report or {}).get("read") or {}).get("columns") or {})


def _publish(work: Path, out: Path) -> None:
    """Rename the complete run ``work`` to ``out``; an old run at ``out`` goes only now, and
    only where it still holds nothing but a run's own files."""
    if out.exists():
        try:
            prepare_output_dir(out, "run", overwrite=True)
        except RunExistsError as e:
            raise RunExistsError(f"{e} (the new run is complete in {work})") from None
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)


def _abandon(work: Path, out: Path, keep: bool = True, error: BaseException | None = None) -> None:
    """After a failure: keep ``work`` if it can be resumed (its config and some epoch's state,
    its own or a ``--pretrain`` sub-run's) and ``keep``, else remove it. A failure to read
    ``work``'s own files (a corrupt state) is not resumable: kept, but --resume is not offered."""
    if not work.exists():
        return
    if keep and isinstance(error, CheckpointError) and str(work) in str(error):
        console.print(f"[yellow]run not complete, and what {work} holds cannot be read (below), so --resume "
                      f"cannot continue it: start the run again with `ncf train ... --out {out}` (remove {work} "
                      "first, or add --overwrite)")
    elif keep and (work / "config.json").exists() and any(work.rglob("state.safetensors")):
        console.print(f"[yellow]run not complete; its resumable state is kept in {work}: "
                      f"`ncf train --resume {out}` continues it")
    else:
        shutil.rmtree(work, ignore_errors=True)


def in_partial(out: Path, fn, clear: bool = True, keep: bool = True):
    """Run ``fn(work)`` with ``work`` = the partial directory of ``out``, then publish it to
    ``out``; on any failure (Ctrl-C too) keep only resumable state (none unless ``keep``). Rank 0
    alone touches files."""
    main = distributed.is_main()
    work = partial_dir(out)
    if main:
        with writing(out):
            if clear and work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
    try:
        with writing(out, errnos=DISK):  # a full disk mid-run: one line, the run kept resumable
            summary = fn(work)
    except BaseException as e:
        if main:
            _abandon(work, out, keep, e)
        raise
    if main:
        with writing(out):
            _publish(work, out)
    distributed.barrier()  # every rank sees the run in place before going on
    return summary


@contextlib.contextmanager
def locked(out: Path | None):
    """Hold the writer's lock on the run directory ``out`` (rank 0; :class:`ncf.outputs.OutputLock`):
    a second writer of it is refused, naming this process; the lock of a dead process is taken over."""
    if out is None or not distributed.is_main():
        yield
        return
    with OutputLock(_target_of(Path(out))) as lock:
        if lock.took_over:
            h = lock.took_over
            console.print(f"[yellow]{lock.path}: taken over from process {h.get('pid')} on {h.get('host')}, "
                          "which no longer runs")
        yield


def build(cfg: TrainConfig, dataset: Dataset):
    """A fresh model for ``dataset``; models that need more than the sizes (side features)
    define ``from_dataset(dataset, **params)``."""
    cls = get_model_class(cfg.model)
    params = cfg.model_params(cls)
    torch.manual_seed(cfg.seed)  # initial weights are part of what the seed fixes
    if cfg.shard_tables:  # the tables live in TorchRec shards: the full-size model only describes them
        with torch.device("meta"):
            return cls.from_params(dataset.n_users, dataset.n_items, **params)
    if hasattr(cls, "from_dataset"):
        return cls.from_dataset(dataset, **params)
    return cls.from_params(dataset.n_users, dataset.n_items, **params)


def write_header(out: Path, data_cfg: dict, cfg: TrainConfig, model, user_map, item_map, seen,
                 item_info: dict | None, report: dict) -> None:
    """The parts of a run directory that do not change while it trains: config.json, id maps,
    the training interactions ``seen`` (the seen filter) and item titles."""
    if not distributed.is_main():  # rank 0 alone writes the run directory
        return
    out.mkdir(parents=True, exist_ok=True)
    save_run_data(out, user_map, item_map, seen, item_info)
    atomic_write_json(out / "config.json", {
        "format": 1, "model": model.name, "model_params": model.hparams(),
        "n_users": model.n_users, "n_items": model.n_items,
        "train": cfg.to_dict(), "data": data_cfg, "dataset_report": report,
    })


def _write_header(out: Path, data_cfg: DataConfig, cfg: TrainConfig, model, dataset: Dataset) -> None:
    t = dataset.train
    # a rank's users only: each rank writes its rows (shards/train-rank{r}), assembled with the model
    seen = t.matrix if dataset.part is None else None
    write_header(out, _data_dict(data_cfg, dataset), cfg, model, t.user_map, t.item_map, seen, dataset.item_info,
                 dataset.report)


def _data_dict(data_cfg: DataConfig | None, dataset: Dataset) -> dict:
    """The data config saved with a run; a named dataset's data directory is resolved now, so
    that ``ncf evaluate`` finds the data the run was trained on whatever $NCF_DATA_DIR says later."""
    d = data_cfg.to_dict() if data_cfg is not None else dict(dataset.config or {})
    if d.get("source") in DATASETS and d.get("data_dir") is None:
        d["data_dir"] = str(data_dir(None))
    return d


def train(data_cfg: DataConfig, cfg: TrainConfig, out: Path | None, dataset: Dataset | None = None,
          progress: bool = True, init_items: Path | None = None, overwrite: bool = False,
          on_epoch=None, resumable: bool = True) -> dict[str, Any]:
    """Train ``cfg.model`` on ``data_cfg``'s dataset, writing the run to ``out``; the summary.
    See :func:`train_model`."""
    return train_model(data_cfg, cfg, out, dataset, progress, init_items, overwrite, on_epoch, resumable)[1]


def train_model(data_cfg: DataConfig | None, cfg: TrainConfig, out: Path | None, dataset: Dataset | None = None,
                progress: bool = True, init_items: Path | None = None, overwrite: bool = False,
                on_epoch=None, resumable: bool = True):
    """Train ``cfg.model`` on ``dataset`` (else ``data_cfg``'s), writing the run to ``out`` (None:
    in memory); returns (the model with its best-validation weights, the summary).

    ``out`` must not hold anything yet unless ``overwrite`` (the old run is then replaced once
    the new one is complete); the run is written into ``partial_dir(out)`` and renamed into
    place at the end (module docstring).

    ``init_items``: a run directory (item2vec) whose item vectors initialise GMF / NeuMF item
    embeddings, matched by raw id (:mod:`ncf.train.warmstart`); reported in ``init_items.json``.
    ``on_epoch``: the Trainer's per-epoch hook (SGD models; see ``Trainer.on_epoch``).
    ``resumable=False``: a run that fails or is stopped leaves no state to resume (``ncf tune``'s
    pruned trials)."""
    if out is None:
        return _train_model(data_cfg, cfg, out, dataset, progress, init_items, overwrite, on_epoch, resumable)
    with locked(out):
        return _train_model(data_cfg, cfg, out, dataset, progress, init_items, overwrite, on_epoch, resumable)


def _train_model(data_cfg, cfg, out, dataset, progress, init_items, overwrite, on_epoch, resumable):
    if out is not None and distributed.is_main():
        check_out(Path(out), overwrite)
    resolve_device(cfg.device)  # --device cuda without a GPU: said before reading or writing anything
    dataset = dataset or _load(data_cfg, cfg)
    _check_trainable(dataset)
    if out is None:
        return _train(data_cfg, cfg, None, dataset, progress, init_items, on_epoch)
    return in_partial(Path(out), lambda work: _train(data_cfg, cfg, work, dataset, progress, init_items, on_epoch),
                       keep=resumable)


def _load(data_cfg: DataConfig, cfg: TrainConfig) -> Dataset:
    """The dataset as this process trains on it: a --shard-tables run with per-user split draws
    reads only its rank's users (``ncf.data.rankload``: no rank holds the whole file); the
    rest read and split the whole file."""
    if not (cfg.shard_tables and data_cfg.split_draws == "per_user"):
        return load_dataset(data_cfg)
    from ncf.data.rankload import load_rank_dataset

    device = distributed.setup(resolve_device(cfg.device))  # the ranks agree on the partition
    return load_rank_dataset(data_cfg, distributed.rank(), distributed.world(), distributed.array_all_sum(device))


def _train(data_cfg, cfg, out, dataset, progress, init_items, on_epoch=None):
    cfg = cfg.resolved(dataset.train_nnz)
    if cfg.pretrain:
        if cfg.model != "neumf":
            raise ConfigError("--pretrain applies to neumf only")
        if init_items is not None:
            raise ConfigError("--init-items does not combine with --pretrain")
        return _train_pretrained(data_cfg, cfg, out, dataset, progress, resume=False)
    model = build(cfg, dataset)
    warm = None
    if init_items is not None and cfg.shard_tables:
        raise ConfigError("--init-items does not combine with --shard-tables")
    if init_items is not None:
        from ncf.train.warmstart import init_item_embeddings

        warm = init_item_embeddings(model, dataset.train.item_map, Path(init_items))
        console.print(f"item embeddings ({', '.join(warm['tables'])}) initialised from {init_items} for "
                      f"{warm['initialised']} items; {warm['random']} keep their random init")
    if out is not None:
        _write_header(Path(out), data_cfg, cfg, model, dataset)
        if warm is not None:
            atomic_write_json(Path(out) / "init_items.json", warm)
    model, summary = _fit(model, dataset, cfg, data_cfg, out, progress, resume=False, on_epoch=on_epoch)
    if warm is not None and summary is not None:  # None: a non-zero distributed rank
        summary["init_items"] = warm
        if out is not None:
            atomic_write_json(Path(out) / "summary.json", summary)
    return model, summary


def _fit(model, dataset, cfg, data_cfg, out, progress, resume, on_epoch=None):
    """(model, summary): SGD models through the Trainer, the others through their ``fit``."""
    if not model.trainable:
        from ncf.deadline import check

        check(getattr(cfg, "deadline", None), f"{model.name}: not started")
        t0 = time.perf_counter()
        model.fit(dataset, cfg)
        elapsed = time.perf_counter() - t0
        trainer = Trainer(model, dataset, cfg, out, progress=progress)
        trainer.elapsed = elapsed
        # a fitted model with its own epoch loop (sasrec, ...) reports the epoch validation chose
        # in ``stats["best_epoch"]``: what a refit on train + validation trains for
        best_epoch = (getattr(model, "stats", None) or {}).get("best_epoch")
        if dataset.valid is not None and dataset.report.get("split") == "given":
            # a given split is judged by the field's protocol: every item ranked, each user scored once
            # (on Gowalla-sized data one scoring of every user is minutes for a graph filter: no sampled
            # protocol on top); stopped between blocks of users at the fit's deadline
            from ncf.deadline import check
            from ncf.eval.topk import evaluate_topk

            deadline = getattr(cfg, "deadline", None)
            trainer.valid_topk = evaluate_topk(
                model, dataset.valid, dataset.train.matrix, (10, 20),
                progress=None if deadline is None else lambda n: check(deadline, f"{model.name}: validation"))
            trainer.best = {"epoch": best_epoch, "score": None, "valid": None}
        elif dataset.valid is not None:
            from ncf.eval.evaluator import evaluate

            trainer.best = {"epoch": best_epoch, "score": None, "valid": evaluate(model, dataset.valid, "sampled")}
        else:
            trainer.best = {**trainer.best, "epoch": best_epoch}
        if out is not None:
            save_model(Path(out), model, _extra(cfg, data_cfg, dataset))
        return model, _with_candidates(trainer.finish(), dataset, out)
    if cfg.shard_tables:
        from ncf.train.sharded import ShardedTrainer  # needs the scale extra (TorchRec)

        trainer = ShardedTrainer(model, dataset, cfg, out, progress=progress)
    else:
        trainer = Trainer(model, dataset, cfg, out, progress=progress)
    trainer.extra_config = lambda: _extra(cfg, data_cfg, dataset)
    trainer.on_epoch = on_epoch
    return model, _with_candidates(trainer.fit(resume=resume), dataset, out)


def _with_candidates(summary: dict | None, dataset: Dataset, out) -> dict | None:
    """The summary with how many candidates each sampled holdout ranks (``"1 + 99"``; fewer on a
    small catalogue), for the tables that label the sampled metrics."""
    if summary is None:  # a non-zero distributed rank
        return None
    sizes = {name: candidates_label(h) for name, h in (("valid", dataset.valid), ("test", dataset.test))
             if h is not None and getattr(h, "loaded", True) and len(h)}  # a test file not read: not read here
    if sizes:
        summary["candidates"] = sizes
        if out is not None and (Path(out) / "summary.json").exists():
            atomic_write_json(Path(out) / "summary.json", summary)
    return summary


def candidates_label(holdout) -> str:
    """``"1 + 99"``: the held-out item and the sampled negatives each row ranks it among
    (``"1 + 20 to 23"`` where users have fewer unseen items than asked for)."""
    n = (np.asarray(holdout.candidates) != PAD).sum(axis=1) - 1
    lo, hi = int(n.min()), int(n.max())
    return f"1 + {hi}" if lo == hi else f"1 + {lo} to {hi}"


def _extra(cfg: TrainConfig, data_cfg: DataConfig, dataset: Dataset) -> dict[str, Any]:
    return {"train": cfg.to_dict(), "data": _data_dict(data_cfg, dataset), "dataset_report": dataset.report}


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
            subs[name] = train_model(data_cfg, sub_cfg, None, dataset, progress)[0]  # best epoch's weights
        elif sub_out is not None and (sub_out / "summary.json").exists():
            _check_pretrained(sub_out, name, dataset)  # never fused unchecked (other data, other flags)
            if not given:
                _check_hparams(sub_out, name, sub_cfg)
            console.print(f"pre-trained {name} found in {sub_out}")
        elif given:
            _check_pretrained(Path(given), name, dataset)
            if sub_out is None:
                source = Path(given)
            else:
                shutil.copytree(given, sub_out, dirs_exist_ok=True)  # the run directory stays self-contained
                console.print(f"pre-trained {name}: {given}, copied to {sub_out}")
        elif sub_out is not None and resume and (partial_dir(sub_out).exists() or
                                                 (sub_out / "state.safetensors").exists()):
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
    return model, trainer.fit(resume=resumable)


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


def _check_hparams(run: Path, name: str, sub_cfg: TrainConfig) -> None:
    """A sub-run found in the run directory has the hyperparameters this run asks of it."""
    want = json.loads(json.dumps(sub_cfg.model_params(get_model_class(name)), default=list))
    have = load_config(run).get("model_params") or {}
    diff = [f"{k}={have[k]!r} (this run: {want[k]!r})" for k in sorted(want) if k in have and have[k] != want[k]]
    if diff:
        raise CheckpointError(f"{run}: pre-trained {name} found with other hyperparameters: {', '.join(diff)}; "
                              f"remove {run} to train it again, or start over with --overwrite")


RESUME_CHANGES = ("epochs", "patience")  # what may change when a run is resumed


def resume_run(out: Path, progress: bool = True, **changes) -> dict[str, Any]:
    """Continue an interrupted run from its last completed epoch (or extend a finished one).

    ``out``: the run directory as given to :func:`train` (an interrupted run waits in
    ``partial_dir(out)`` and is renamed to ``out`` when complete), or that partial directory
    itself; a run directory interrupted in place (written before partial directories) is
    continued in place. ``changes``: new ``epochs`` / ``patience`` (None: unchanged); a
    finished run so extended is continued in a copy that replaces it when complete."""
    unknown = sorted(set(changes) - set(RESUME_CHANGES))
    if unknown:
        raise ConfigError(f"resume can change only {', '.join(RESUME_CHANGES)}, not {', '.join(unknown)}")
    changes = {k: v for k, v in changes.items() if v is not None}
    with locked(out):
        return _resume_run(out, progress, changes)


def _resume_run(out: Path, progress: bool, changes: dict) -> dict[str, Any]:
    target = _target_of(Path(out))
    part = partial_dir(target)
    main = distributed.is_main()
    if (part / "config.json").exists():
        work, publish = part, True  # interrupted: its state waits in the partial directory
    elif not target.is_dir():
        raise CheckpointError(f"{target}: no such run directory (nor an interrupted run in {part})")
    elif changes and (target / "summary.json").exists() and distributed.env_world() == 1:
        work, publish = part, True  # a finished run extended: in a copy, the original kept until done
        if main:
            shutil.rmtree(part, ignore_errors=True)
            shutil.copytree(target, part)
    else:
        work, publish = target, False
    cfg_json = load_config(work)
    if not isinstance(cfg_json, dict):
        raise CheckpointError(f"{work / 'config.json'}: not an ncf run config")
    check_config_keys(cfg_json, work / "config.json")
    try:
        cfg = TrainConfig.from_dict(cfg_json["train"])
        data_cfg = DataConfig(**cfg_json["data"])
        if changes:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **changes})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{work / 'config.json'}: cannot resume ({e})") from None
    if changes and main:
        atomic_write_json(work / "config.json", {**cfg_json, "train": cfg.to_dict()})
    if not publish:
        return _resume(work, cfg, data_cfg, progress)[1]
    return in_partial(target, lambda w: _resume(w, cfg, data_cfg, progress), clear=False)[1]


def _resume(out: Path, cfg: TrainConfig, data_cfg: DataConfig, progress: bool):
    dataset = _load(data_cfg, cfg)
    if (out / "summary.json").exists():
        console.print(f"{out} already finished; continuing it up to epoch {cfg.epochs} (if not there yet) "
                      "and evaluating the saved best model")
    if cfg.pretrain:
        return _train_pretrained(data_cfg, cfg, out, dataset, progress, resume=True)
    model = build(cfg, dataset)
    resumable = (out / "state.safetensors").exists() or (out / "shards" / "index.json").exists()
    return _fit(model, dataset, cfg, data_cfg, out, progress, resume=resumable)


__all__ = ["train", "train_model", "resume_run", "MODELS"]
