"""The Trainer: negative sampling per epoch, optimizer steps, validation-driven early
stopping, resumable state, metrics.jsonl and summary.json.

Model selection and early stopping look at the validation holdout only; the test holdout
is evaluated once, for the best validation epoch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from ncf.console import console
from ncf.data.sampling import NegativeSampler
from ncf.data.split import Dataset
from ncf.errors import ConfigError, TrialTimeout
from ncf.eval.evaluator import evaluate
from ncf.models import Model
from ncf.train import distributed
from ncf.train.losses import make_optimizer
from ncf.train.sparse import JointOptimizer, make_sparse_optimizer, use_sparse  # noqa: F401 (re-exported)


def _loss_text(loss: float) -> str:
    return f"loss {loss:.4f}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available")
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
    """Trains ``model`` on ``dataset`` with ``cfg``; writes ``out_dir`` (when given).

    ``fit(resume=False) -> summary``; afterwards the model holds the best-validation epoch's
    weights (the ones test is reported for), with or without a run directory. Under torchrun
    (see :mod:`ncf.train.distributed`) every rank trains its slice of each global batch and
    rank 0 alone evaluates, logs and writes files; non-zero ranks return ``None`` from ``fit``.
    """

    def __init__(self, model: Model, dataset: Dataset, cfg: TrainConfig, out_dir: Path | None,
                 progress: bool = True, log: Console | None = None):
        cfg = cfg.resolved(dataset.train.nnz)  # "auto" batch size / learning rate
        self.cfg = cfg
        self.dataset = dataset
        self.out = Path(out_dir) if out_dir else None
        self.device = distributed.setup(resolve_device(cfg.device))
        self.rank, self.world = distributed.rank(), distributed.world()
        self.main = self.rank == 0
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = model.to(self.device)
        self.progress = progress and self.main
        self.console = log or console
        self.pairwise = cfg.loss == "bpr"
        self.sampler = NegativeSampler(dataset.train.matrix, cfg.neg, cfg.seed, self.device)
        cuda = self.device.type == "cuda"
        self.sparse = use_sparse(self.model, cfg, nccl=self.world > 1 and cuda, cuda=cuda)
        self.opt = (make_sparse_optimizer(self.model, cfg) if self.sparse  # sets nn.Embedding.sparse
                    else make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr))
        self.train_model = distributed.wrap(self.model, self.device)  # after the sparse flags
        # data parallelism over CPU cores inside this process: each step's batch is split in
        # `workers` parts, each through its own replica (sharing the weights, own gradients)
        # on its own thread with single-threaded ops; gradients summed in a fixed order
        self.workers = self._n_workers()
        self.replicas = [self.model] + [self._replica() for _ in range(self.workers - 1)]
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "valid": None}
        self.start_epoch = 1
        self.elapsed = 0.0
        self.best_weights: dict[str, torch.Tensor] | None = None  # without a run directory
        # called with each epoch's record (rank 0, after it is logged); returning True stops
        # training there (the best epoch so far is kept); it may raise to abandon the run
        self.on_epoch: Callable[[dict[str, Any]], bool] | None = None
        # a thread assembling the next batches while this one trains (CPU only: on a GPU
        # the work is queued asynchronously anyway)
        self.prefetch = 2 if self.device.type == "cpu" else 0
        # ``cfg.deadline`` (time.monotonic(); ncf tune): checked before every optimizer step
        self.deadline = getattr(cfg, "deadline", None)
        self.stopped: str | None = None  # why training ended before ``epochs`` (the deadline)

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
            if self.main:
                metrics.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    # -- training --------------------------------------------------------------------
    def _n_workers(self) -> int:
        """Threads that each train a part of every batch (``cfg.workers``; auto: the intra-op
        thread count, with parts of at least 8192 samples) on CPU, for models that declare it
        safe (no buffers; dropout from a ``dropout_generator`` the trainer gives each replica);
        1 (plain) otherwise and under DDP."""
        ok = (self.device.type == "cpu" and self.train_model is self.model
              and getattr(self.model, "thread_parallel", False) and not any(True for _ in self.model.buffers()))
        if not ok or self.cfg.workers == 1:
            return 1
        return self.cfg.workers or max(1, min(torch.get_num_threads(), self.cfg.batch_size // 8192))

    def _replica(self) -> Model:
        """A copy of the model whose parameters share the model's storage (so optimizer steps
        reach it) but accumulate their own gradients."""
        rep = copy.deepcopy(self.model)
        for mine, theirs in zip(rep.parameters(), self.model.parameters(), strict=True):
            mine.data = theirs.data
        return rep

    def lr_at(self, epoch: int, step: int, n_steps: int) -> float:
        """The learning rate of ``step`` (0-based) of ``epoch`` (1-based): ``cfg.lr`` after a
        linear warm-up of ``cfg.warmup_epochs``, then constant or decayed (``lr_schedule``)
        towards 0 at the end of ``cfg.epochs``."""
        cfg = self.cfg
        t = (epoch - 1) + step / max(n_steps, 1)  # epochs done
        if cfg.warmup_epochs and t < cfg.warmup_epochs:
            return cfg.lr * (t + 1 / max(n_steps, 1)) / cfg.warmup_epochs
        if cfg.lr_schedule == "constant":
            return cfg.lr
        frac = min(1.0, (t - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9))
        if cfg.lr_schedule == "cosine":
            return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
        return cfg.lr * (1 - frac)  # linear

    def _batches(self, plan, n_steps: int):
        """``(batch, n_global)`` for each step: this rank's slice of every global batch."""
        def make(step):
            return plan.shard_batch(step, self.cfg.batch_size, self.rank, self.world)

        if not self.prefetch:
            yield from (make(k) for k in range(n_steps))
            return
        with ThreadPoolExecutor(1, thread_name_prefix="ncf-batches") as pool:
            ahead = [pool.submit(make, k) for k in range(min(self.prefetch, n_steps))]
            for k in range(n_steps):
                item = ahead.pop(0).result()
                if k + len(ahead) + 1 < n_steps:
                    ahead.append(pool.submit(make, k + len(ahead) + 1))
                yield item

    def _loss_sum(self, batch: tuple[torch.Tensor, ...], replica: int = 0) -> torch.Tensor:
        """Sum of the per-sample losses of ``batch`` (plus the L2 penalty, as a sum), through
        the model (or its ``replica``-th thread replica)."""
        net = self.train_model if replica == 0 else self.replicas[replica]
        module = self.model if replica == 0 else self.replicas[replica]
        b = len(batch[0])
        if self.pairwise:
            u, p, n = batch
            users, items = torch.cat([u, u]), torch.cat([p, n])
            logits = net(users, items)  # one call: DDP wants one forward a step
            loss = -F.logsigmoid(logits[:b] - logits[b:]).sum()
        else:
            users, items, y = batch
            logits = net(users, items)
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        if b:
            reg = module.regularization(users, items)
            if reg is not None:
                loss = loss + reg * b
        return loss

    def train_epoch(self, epoch: int, progress: Progress | None = None, task=None,
                    max_steps: int | None = None) -> tuple[float, int]:
        """One epoch (its first ``max_steps`` steps only, when given, for benchmarks);
        returns (mean loss, samples) over all ranks."""
        for m in self.replicas:
            m.train()
        self.train_model.train()
        # dropout draws from torch's global generator, or from a generator per thread replica:
        # seeded per (seed, epoch, rank, replica) so that a resumed run draws the same masks
        base = self.cfg.seed * 1_000_003 + epoch * 7_919 + self.rank * 104_729
        torch.manual_seed(base % (2**63 - 1))
        for k, rep in enumerate(self.replicas):  # models that take a generator: one per thread
            g = torch.Generator(device=self.device)
            g.manual_seed((base + 15_485_863 * (k + 1)) % (2**63 - 1))
            for m in rep.modules():
                if hasattr(m, "dropout_generator"):
                    m.dropout_generator = g
        plan = self.sampler.plan(epoch, self.pairwise)
        n_steps = -(-len(plan) // (self.cfg.batch_size * self.world))
        n_steps = min(n_steps, max_steps) if max_steps else n_steps
        n = min(len(plan), n_steps * self.cfg.batch_size * self.world)
        if self.workers > 1:
            total = self._epoch_threads(plan, epoch, n_steps, progress, task)
        else:
            total = self._epoch_plain(plan, epoch, n_steps, progress, task)
        total = distributed.all_sum(total)
        return float(total) / max(n, 1), n

    def _check_deadline(self, epoch: int, step: int, n_steps: int) -> None:
        """Raise :class:`TrialTimeout` once ``cfg.deadline`` has passed (before ``step`` of ``epoch``):
        one long epoch cannot run past a time limit."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TrialTimeout(f"{self.model.name}: time limit reached at step {step} of {n_steps} of epoch {epoch}")

    def _set_lr(self, epoch: int, step: int, n_steps: int) -> None:
        lr = self.lr_at(epoch, step, n_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _epoch_plain(self, plan, epoch, n_steps, progress, task) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for step, (batch, n_global) in enumerate(self._batches(plan, n_steps)):
            self._check_deadline(epoch, step, n_steps)
            self._set_lr(epoch, step, n_steps)
            loss_sum = self._loss_sum(batch)
            self.opt.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: weighting each rank's sum by world / n_global
            # makes that average the gradient of the global batch's mean loss
            (loss_sum * (self.world / n_global)).backward()
            self.opt.step()
            total += loss_sum.detach()
            if progress is not None and step % 10 == 0:  # reading the loss syncs a GPU
                loss = float(loss_sum.detach()) / max(len(batch[0]), 1)
                progress.update(task, completed=step + 1, loss=_loss_text(loss))
        return total

    def _epoch_threads(self, plan, epoch, n_steps, progress, task) -> torch.Tensor:
        """Each step: part k of the batch through replica k on its own thread; gradients of
        the sum over parts / batch size, summed into the model's in replica order. The next
        step's parts are built (sampling does not depend on the weights) on a thread of their
        own while this step's gradients are summed and the optimizer steps."""
        bs, n, w = self.cfg.batch_size, len(plan), self.workers
        params = [list(m.parameters()) for m in self.replicas]
        total = torch.zeros((), dtype=torch.float64)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one core per worker thread

        def build(step: int) -> list[tuple[torch.Tensor, ...]]:
            lo, hi = step * bs, min((step + 1) * bs, n)
            return [plan.batch(lo + (hi - lo) * k // w, lo + (hi - lo) * (k + 1) // w) for k in range(w)]

        def part(k: int, batch: tuple[torch.Tensor, ...], n_global: int) -> torch.Tensor:
            loss_sum = self._loss_sum(batch, k)
            (loss_sum / n_global).backward()
            return loss_sum.detach()

        try:
            with ThreadPoolExecutor(w - 1, thread_name_prefix="ncf-part") as pool, \
                    ThreadPoolExecutor(1, thread_name_prefix="ncf-batches") as builder:
                ahead = builder.submit(build, 0)
                for step in range(n_steps):
                    self._check_deadline(epoch, step, n_steps)
                    parts = ahead.result()
                    n_global = sum(len(b[0]) for b in parts)
                    self._set_lr(epoch, step, n_steps)
                    for m in self.replicas:
                        m.zero_grad(set_to_none=True)
                    futures = [pool.submit(part, k, parts[k], n_global) for k in range(1, w)]
                    losses = [part(0, parts[0], n_global)] + [f.result() for f in futures]
                    if step + 1 < n_steps:
                        ahead = builder.submit(build, step + 1)
                    self._sum_replica_grads(params)
                    torch.set_num_threads(threads)  # the optimizer's ops may use every core
                    self.opt.step()
                    torch.set_num_threads(1)
                    loss_sum = sum(losses)
                    total += loss_sum
                    if progress is not None and step % 10 == 0:
                        progress.update(task, completed=step + 1, loss=_loss_text(float(loss_sum) / max(n_global, 1)))
        finally:
            torch.set_num_threads(threads)
        return total

    @staticmethod
    def _sum_replica_grads(params: list[list[torch.nn.Parameter]]) -> None:
        """Add the gradients of replicas 1.. into the model's (replica 0), in replica order.
        Sparse row gradients are concatenated (uncoalesced): the optimizer sums duplicate
        rows once for the whole batch."""
        for rep in params[1:]:
            for p, q in zip(params[0], rep, strict=True):
                if q.grad is None:
                    continue
                if p.grad is None:
                    p.grad = q.grad
                elif p.grad.is_sparse and q.grad.is_sparse:
                    p.grad = torch.sparse_coo_tensor(
                        torch.cat([p.grad._indices(), q.grad._indices()], 1),
                        torch.cat([p.grad._values(), q.grad._values()]), p.grad.shape,
                        is_coalesced=False, check_invariants=False)
                elif p.grad.is_sparse or q.grad.is_sparse:
                    p.grad = p.grad + q.grad
                else:
                    p.grad.add_(q.grad)

    def fit(self, resume: bool = False) -> dict[str, Any] | None:
        cfg = self.cfg
        if resume:
            self.load_state()
        valid = self.dataset.valid
        if valid is None and self.progress:
            self.console.print("[yellow]no validation holdout: the last epoch is kept, no early stopping")
        n_batches = self.sampler.n_batches(cfg.batch_size, self.pairwise, self.world)
        bad_epochs = 0
        for r in self.history:
            bad_epochs = 0 if r["epoch"] == self.best["epoch"] else bad_epochs + 1
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[loss]}"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, disable=not self.progress, transient=True) as prog:
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                # rank 0 holds the validation history: its decision is everybody's
                if distributed.broadcast_flag(bool(cfg.patience and bad_epochs >= cfg.patience), self.device):
                    if self.progress:
                        self.console.print(f"early stop: no better valid {cfg.monitor} for {bad_epochs} epochs "
                                           f"(--patience {cfg.patience}); keeping epoch {self.best['epoch']}")
                    break
                desc = f"{self.model.name} epoch {epoch}/{cfg.epochs}"
                task = prog.add_task(desc, total=n_batches, loss="")  # no loss to show before a step
                t0 = time.perf_counter()
                try:
                    loss, n = self.train_epoch(epoch, prog if self.progress else None, task)
                except TrialTimeout as e:
                    prog.remove_task(task)
                    self._stop_at_deadline(epoch, e)
                    break
                t_train = time.perf_counter() - t0
                prog.remove_task(task)
                if not self.main:
                    continue
                record: dict[str, Any] = {"epoch": epoch, "loss": loss, "samples": n, "train_seconds": t_train}
                if valid is not None:
                    record["valid"] = evaluate(self.model, valid, "sampled")
                    score = record["valid"][cfg.monitor]
                else:
                    score = float(epoch)
                record["seconds"] = time.perf_counter() - t0
                self.elapsed += record["seconds"]
                improved = score > self.best["score"]
                if improved:
                    self.best = {"epoch": epoch, "score": score, "valid": record.get("valid")}
                    bad_epochs = 0
                    self._keep_best()
                else:
                    bad_epochs += 1
                self.history.append(record)
                self._log(record, improved)
                if self.out:
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    self.save_state(epoch)
                if self.on_epoch is not None and self.on_epoch(record):
                    break  # the caller (ncf tune: its time budget) stops here; the best epoch is kept
        summary = self.finish()
        distributed.barrier()  # the run directory is complete before any rank goes on
        return summary

    def _stop_at_deadline(self, epoch: int, e: TrialTimeout) -> None:
        """The deadline came during ``epoch``: that epoch's partial steps are dropped and the best
        finished epoch is kept; with none finished there is nothing to keep and ``e`` goes up."""
        if not math.isfinite(self.best["score"]):
            raise TrialTimeout(f"{e} (no epoch finished: nothing to keep)") from None
        self.stopped = f"time limit reached during epoch {epoch}; epoch {self.best['epoch']} kept"
        if self.progress:
            self.console.print(f"[yellow]{self.stopped}")

    def evaluate_start(self) -> None:
        """Make the model as it is now (before any training step) the best so far, "epoch 0",
        when it has a validation score: for a model that starts trained (NeuMF fused from
        pre-trained GMF and MLP), so that training only replaces it by something better."""
        if not self.main or self.dataset.valid is None:
            return
        v = evaluate(self.model, self.dataset.valid, "sampled")
        self.best = {"epoch": 0, "score": v[self.cfg.monitor], "valid": v}
        self._keep_best()
        if self.progress:
            self.console.print(f"epoch   0  (before training)  valid hr@10 {v['hr@10']:.4f} "
                               f"ndcg@10 {v['ndcg@10']:.4f}  *")

    def _keep_best(self) -> None:
        """The current weights are the best so far: saved in the run directory, or (without one)
        copied in memory, for ``finish`` to evaluate."""
        if self.out:
            save_model(self.out, self.model, self.extra_config())
        else:
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def extra_config(self) -> dict[str, Any]:
        return {"train": self.cfg.to_dict()}

    def _log(self, r: dict[str, Any], improved: bool) -> None:
        if not self.progress:
            return
        v = r.get("valid") or {}
        rate = r["samples"] / max(r["train_seconds"], 1e-9)
        self.console.print(
            f"epoch {r['epoch']:>3}  loss {r['loss']:.4f}  valid hr@10 {v.get('hr@10', float('nan')):.4f} "
            f"ndcg@10 {v.get('ndcg@10', float('nan')):.4f}  {r['seconds']:.1f}s ({rate / 1e3:.0f}k samples/s)"
            + ("  *" if improved else "")
        )

    def finish(self) -> dict[str, Any] | None:
        """Test metrics of the best-validation weights; writes summary.json and the curves
        (rank 0; other ranks of a distributed run return None)."""
        if not self.main:
            return None
        if self.out and (self.out / "model.safetensors").exists():
            from ncf.checkpoint import load_model

            best = load_model(self.out, device=self.device)
            self.model.load_state_dict(best.state_dict())
        elif self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        ds = self.dataset
        test = test_full = topk = None  # fitting through the Python API never reads test (Dataset.without_test)
        if ds.test is not None:
            test = evaluate(self.model, ds.test, "sampled")
            test_full = evaluate(self.model, ds.test, "full", seen=ds.seen(include_valid=True))
            if ds.report.get("split", "loo") != "loo":  # several test items a user: the top-k metrics too
                from ncf.eval.topk import evaluate_topk

                topk = evaluate_topk(self.model, ds.test, ds.seen(include_valid=True), (10, 20))
        samples = sum(r["samples"] for r in self.history)
        train_s = sum(r["train_seconds"] for r in self.history)
        epoch_s = sum(r["seconds"] for r in self.history)
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
            # sampling, batching, optimizer steps and per-epoch validation
            "samples_per_second_end_to_end": samples / epoch_s if epoch_s else None,
            "device": str(self.device),
            "processes": self.world,
        }
        if getattr(self, "valid_topk", None) is not None:
            summary["valid_topk"] = self.valid_topk
        if topk is not None:
            summary["test_topk"] = topk
        if self.stopped:
            summary["stopped"] = self.stopped
        if self.out:
            atomic_write_json(self.out / "summary.json", summary)
            from ncf.train.plots import learning_curves

            learning_curves(self.history, self.out / "curves.png", title=f"{self.model.name} on {ds.name}")
        return summary
