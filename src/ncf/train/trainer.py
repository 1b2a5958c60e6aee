"""The Trainer: negative sampling per epoch, optimizer steps, validation-driven early
stopping, resumable state, metrics.jsonl and summary.json.

Model selection and early stopping look at the validation holdout only; the test holdout
is evaluated once, for the best validation epoch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ncf.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_tensors,
    save_model,
    save_tensors,
)
from ncf.config import TrainConfig
from ncf.data.sampling import NegativeSampler
from ncf.data.split import Dataset
from ncf.eval.evaluator import evaluate
from ncf.models import Model
from ncf.train.losses import bce_loss, bpr_loss, make_optimizer

console = Console(stderr=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def _opt_state_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _opt_state_from(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


class Trainer:
    def __init__(self, model: Model, dataset: Dataset, cfg: TrainConfig, out_dir: Path | None,
                 progress: bool = True, log: Console | None = None):
        self.cfg = cfg
        self.dataset = dataset
        self.out = Path(out_dir) if out_dir else None
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = model.to(self.device)
        self.progress = progress
        self.console = log or console
        self.pairwise = cfg.loss == "bpr"
        self.sampler = NegativeSampler(dataset.train.matrix, cfg.neg, cfg.seed, self.device)
        self.opt = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "valid": None}
        self.start_epoch = 1
        self.elapsed = 0.0

    # -- state -----------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.out / "state.safetensors"

    def save_state(self, epoch: int) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_t, opt_meta = _opt_state_tensors(self.opt)
        tensors.update(opt_t)
        meta = {"epoch": str(epoch), "best": json.dumps(self.best), "elapsed": repr(self.elapsed),
                "optimizer": json.dumps(opt_meta)}
        save_tensors(self._state_path(), tensors, metadata=meta)

    def load_state(self) -> None:
        path = self._state_path()
        if not path.exists():
            raise CheckpointError(f"{path}: no training state to resume from")
        from safetensors import safe_open

        tensors = load_tensors(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        try:
            epoch = int(meta["epoch"])
            self.best = json.loads(meta["best"])
            self.elapsed = float(meta["elapsed"])
            opt_meta = json.loads(meta["optimizer"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: training state lacks metadata ({e})") from None
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_sd)
            self.opt.load_state_dict(_opt_state_from(tensors, opt_meta))
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: state does not match the configured model ({e})") from None
        self.start_epoch = epoch + 1
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():
            lines = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            self.history = [r for r in lines if r["epoch"] <= epoch]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    # -- training --------------------------------------------------------------------
    def train_epoch(self, epoch: int, progress: Progress | None, task) -> tuple[float, int]:
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        bs = self.cfg.batch_size
        for step, batch in enumerate(self.sampler.batches(epoch, bs, pairwise=self.pairwise)):
            if self.pairwise:
                u, p, n = batch
                loss = bpr_loss(self.model(u, p), self.model(u, n))
                reg = self.model.regularization(torch.cat([u, u]), torch.cat([p, n]))
            else:
                u, i, y = batch
                loss = bce_loss(self.model(u, i), y)
                reg = self.model.regularization(u, i)
            if reg is not None:
                loss = loss + reg
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n = len(batch[0])
            total += loss.detach() * n
            count += n
            if progress is not None and step % 20 == 0:  # reading the loss syncs a GPU
                progress.update(task, completed=step + 1, loss=float(loss.detach()))
        return float(total) / max(count, 1), count

    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        if resume:
            self.load_state()
        valid = self.dataset.valid
        if valid is None:
            self.console.print("[yellow]no validation holdout: the last epoch is kept, no early stopping")
        n_batches = self.sampler.n_batches(cfg.batch_size, self.pairwise)
        bad_epochs = 0
        for r in self.history:
            bad_epochs = 0 if r["epoch"] == self.best["epoch"] else bad_epochs + 1
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, disable=not self.progress, transient=True) as prog:
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                if cfg.patience and bad_epochs >= cfg.patience:
                    break
                desc = f"{self.model.name} epoch {epoch}/{cfg.epochs}"
                task = prog.add_task(desc, total=n_batches, loss=float("nan"))
                t0 = time.perf_counter()
                loss, n = self.train_epoch(epoch, prog if self.progress else None, task)
                t_train = time.perf_counter() - t0
                record: dict[str, Any] = {"epoch": epoch, "loss": loss, "samples": n, "train_seconds": t_train}
                if valid is not None:
                    record["valid"] = evaluate(self.model, valid, "sampled")
                    score = record["valid"][cfg.monitor]
                else:
                    score = float(epoch)
                record["seconds"] = time.perf_counter() - t0
                self.elapsed += record["seconds"]
                prog.remove_task(task)
                improved = score > self.best["score"]
                if improved:
                    self.best = {"epoch": epoch, "score": score, "valid": record.get("valid")}
                    bad_epochs = 0
                    if self.out:
                        save_model(self.out, self.model, self.extra_config())
                else:
                    bad_epochs += 1
                self.history.append(record)
                self._log(record, improved)
                if self.out:
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    self.save_state(epoch)
        return self.finish()

    def extra_config(self) -> dict[str, Any]:
        return {"train": self.cfg.to_dict()}

    def _log(self, r: dict[str, Any], improved: bool) -> None:
        v = r.get("valid") or {}
        rate = r["samples"] / max(r["train_seconds"], 1e-9)
        self.console.print(
            f"epoch {r['epoch']:>3}  loss {r['loss']:.4f}  valid hr@10 {v.get('hr@10', float('nan')):.4f} "
            f"ndcg@10 {v.get('ndcg@10', float('nan')):.4f}  {r['seconds']:.1f}s ({rate / 1e3:.0f}k samples/s)"
            + ("  *" if improved else "")
        )

    def finish(self) -> dict[str, Any]:
        if self.out and (self.out / "model.safetensors").exists():
            from ncf.checkpoint import load_model

            best = load_model(self.out, device=self.device)
            self.model.load_state_dict(best.state_dict())
        ds = self.dataset
        test = evaluate(self.model, ds.test, "sampled")
        test_full = evaluate(self.model, ds.test, "full", seen=ds.seen(include_valid=True))
        samples = sum(r["samples"] for r in self.history)
        train_s = sum(r["train_seconds"] for r in self.history)
        summary = {
            "model": self.model.name,
            "dataset": ds.name,
            "best_epoch": self.best["epoch"],
            "epochs_run": len(self.history),
            "valid": self.best["valid"],
            "test": test,
            "test_full": test_full,
            "train_seconds": self.elapsed,
            "samples_per_second": samples / train_s if train_s else None,
            "device": str(self.device),
        }
        if self.out:
            atomic_write_json(self.out / "summary.json", summary)
            from ncf.train.plots import learning_curves

            learning_curves(self.history, self.out / "curves.png", title=f"{self.model.name} on {ds.name}")
        return summary
