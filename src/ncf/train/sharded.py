"""Embedding tables sharded over the ranks with TorchRec (``ncf train --shard-tables``).

GMF / MLP / NeuMF keep their math; only where the table rows live changes. The model's
embedding tables of one side are concatenated by columns into one TorchRec table (``user``:
GMF's then the MLP's user embeddings; ``item`` likewise) inside an ``EmbeddingBagCollection``
(one id per bag, sum pooling: a plain lookup). ``DistributedModelParallel`` shards the two
tables as its planner decides (table-wise or column-wise on CPU, row-wise too on GPUs), with
the optimizer fused into the embedding kernels (row-wise AdaGrad by default: one float of
state per row; applied inside the backward pass); the tower and output layer (the model's
own modules, with 1-row tables removed) are data-parallel.

Each rank samples only its own users' interactions (:mod:`ncf.data.partition`), and a run
whose data config draws the split per user reads only them (:mod:`ncf.data.rankload`), so no
rank needs the whole interaction matrix; a step looks up the rank's batch by all-to-all.
Loss weighting: rank ``r`` back-propagates its loss sum / ``n_global``; table rows
receive the sum over ranks (the gradient of the global batch's mean loss) and the tower's
gradients, averaged by DDP, are multiplied by ``W`` to be the same gradient.

Checkpoints: :mod:`ncf.train.shardckpt` (safetensors + JSON, no pickle).
Needs the ``scale`` extra: ``pip install 'ncf[scale]'`` (see README).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ncf.checkpoint import CheckpointError, load_model, load_tensors, save_tensors
from ncf.config import TrainConfig
from ncf.data.partition import UserShardSampler, user_bounds
from ncf.data.split import PAD, HoldOut
from ncf.errors import ConfigError
from ncf.eval.evaluator import evaluate, full_ranks
from ncf.eval.metrics import pessimistic_rank, summarize
from ncf.models import Model
from ncf.train import distributed, shardckpt
from ncf.train.losses import make_optimizer
from ncf.train.sharded_hint import INSTALL
from ncf.train.shardmodel import SHARDABLE, SIDES, ShardedNCF, dense_model, init_rows, table_parts
from ncf.train.trainer import Trainer, _opt_state_from, _opt_state_tensors, console, resolve_device

try:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ConfigError(f"{INSTALL} ({e})") from None

# TorchRec wraps the tower in DDP with an argument torch 2.13 deprecates (harmless)
warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)

TABLE_LR = 0.2  # row-wise AdaGrad's step for --table-lr 0: best validation NDCG@10 of 0.05, 0.1, 0.2, 0.5 on ml-100k
CPU_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")  # what FBGEMM's CPU kernels implement
OPTIM = {"rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD", "adagrad": "EXACT_ADAGRAD", "sgd": "EXACT_SGD",
         "adam": "ADAM", "rowwise_adam": "PARTIAL_ROWWISE_ADAM"}

CONVERT_FRACTION = 0.25  # assemble the tables at the end of a run when they take at most this of the RAM


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class ShardedTrainer(Trainer):
    """The :class:`Trainer` contract (``fit(resume) -> summary`` on rank 0, ``None`` elsewhere;
    the same run directory files) with TorchRec-sharded tables. ``model`` is the full-size model
    on the meta device (a description: name, sizes, hyperparameters; no table memory)."""

    def __init__(self, model: Model, dataset, cfg: TrainConfig, out_dir: Path | None, progress: bool = True,
                 log=None):
        cfg = cfg.resolved(dataset.train_nnz)
        if model.name not in SHARDABLE:
            raise ConfigError(f"--shard-tables supports {', '.join(SHARDABLE)}, not {model.name!r}")
        if cfg.loss != "bce":
            raise ConfigError("--shard-tables trains with the pointwise log loss (--loss bce) only")
        if cfg.pretrain:
            raise ConfigError("--shard-tables does not combine with --pretrain")
        self.cfg, self.dataset, self.skeleton = cfg, dataset, model
        self.out = Path(out_dir) if out_dir else None
        self.device = distributed.setup(resolve_device(cfg.device))
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("--shard-tables runs under torchrun: add --nproc N (N >= 1) or start it with torchrun")
        self.rank, self.world = distributed.rank(), distributed.world()
        self.main = self.rank == 0
        cuda = self.device.type == "cuda"
        if not cuda and cfg.table_optimizer not in CPU_OPTIMIZERS:
            raise ConfigError(f"--table-optimizer {cfg.table_optimizer} runs on GPUs only; FBGEMM's CPU kernels "
                             f"offer {', '.join(CPU_OPTIMIZERS)}")
        if not cuda and cfg.sharding == "row_wise":
            raise ConfigError("--sharding row_wise needs GPUs (TorchRec's planner offers table_wise and "
                             "column_wise on CPU)")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.progress, self.console = progress and self.main, log or console
        self.parts = table_parts(model)
        self.dims = {s: sum(d for _, d in self.parts[s]) for s in SIDES}
        self.dense = dense_model(cfg, model)
        self.table_lr = cfg.table_lr or TABLE_LR
        self.net = self._shard(ShardedNCF(self.dense, model.n_users, model.n_items, self.dims))
        self.dense = self.net.module.dense  # the tower as DistributedModelParallel holds it
        self.dense_params = [p for n, p in self.net.named_parameters() if not n.startswith("tables.")
                             and p.requires_grad]
        self.opt = make_optimizer(cfg.optimizer, self.dense_params, cfg.lr)
        self._init_tables()
        part = dataset.part  # set where this rank loaded only its users (ncf.data.rankload)
        if part is not None and (part.rank, part.world) != (self.rank, self.world):
            raise ConfigError(f"the dataset holds the users of rank {part.rank} of {part.world}; this is rank "
                              f"{self.rank} of {self.world}")
        counts = part.train_counts if part is not None else np.diff(dataset.train.matrix.indptr)
        self.bounds = part.bounds if part is not None else user_bounds(counts, self.world)
        # only this rank's users' rows: its samples, and the membership tests of their negatives
        self.sampler = UserShardSampler.for_rank(dataset.train.matrix, self.bounds, self.rank, cfg.neg, cfg.seed,
                                                 self.device, counts=counts)
        if part is not None and self.out:  # the seen filter of the run, a range of users a rank
            lo, hi = part.users
            shardckpt.save_train_rows(self.out, self.rank, dataset.train.matrix, lo, hi)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "valid": None}
        self.start_epoch, self.elapsed = 1, 0.0
        self.best_local: dict[str, torch.Tensor] | None = None

    # -- TorchRec ----------------------------------------------------------------------
    def _shard(self, module: ShardedNCF):
        cfg = self.cfg
        kind = self.device.type
        if cfg.sharding == "auto":
            types = ["row_wise", "table_row_wise", "table_wise", "column_wise"] if kind == "cuda" \
                else ["table_wise", "column_wise"]
        else:
            types = [cfg.sharding]
        constraints = {}
        for s in SIDES:
            dim = self.dims[s]
            # column-wise: blocks of at least dim / W columns (FBGEMM: a multiple of 4 dividing dim)
            part = next((d for d in range(4, dim + 1, 4) if dim % d == 0 and d * self.world >= dim), dim)
            constraints[s] = ParameterConstraints(sharding_types=types, compute_kernels=["fused"],
                                                  min_partition=part if "column_wise" in types else None)
        fused = {"optimizer": getattr(EmbOptimType, OPTIM[cfg.table_optimizer]), "learning_rate": self.table_lr}
        sharder = EmbeddingBagCollectionSharder(fused_params=fused)
        trainer = {"world_size": self.world, "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", self.world))}
        if kind == "cuda":
            trainer["hbm_cap_bytes"] = torch.cuda.get_device_properties(self.device).total_memory
        topology = TopologyFactory.create_topology(TrainerConfig(**trainer), kernel_config=KernelConfig(
            compute_device=kind))
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints,
                                           batch_size=max(cfg.batch_size, 1),
                                           storage_reservation=FixedPercentageStorageReservation(0.15))
        plan = planner.collective_plan(module, [sharder], dist.group.WORLD)
        self.plan = plan
        return DistributedModelParallel(module, device=self.device, plan=plan, sharders=[sharder])

    def _table_tensors(self) -> dict[str, Any]:
        """{side: the ShardedTensor of its table}."""
        sd = self.net.state_dict()
        return {s: sd[f"tables.embedding_bags.{s}.weight"] for s in SIDES}

    def _init_tables(self) -> None:
        with torch.no_grad():
            for t, (side, st) in enumerate(self._table_tensors().items()):
                for sh in st.local_shards():
                    (r0, c0), (n, m) = sh.metadata.shard_offsets, sh.metadata.shard_sizes
                    sh.tensor.copy_(init_rows(self.cfg.seed, t, r0, n, self.dims[side])[:, c0: c0 + m])

    def layout(self) -> dict[str, Any]:
        """The shard index (see :mod:`ncf.train.shardckpt`), from the global shard metadata."""
        tables = {}
        for side, st in self._table_tensors().items():
            shards = []
            for md in st.metadata().shards_metadata:
                (r0, c0), (n, m) = md.shard_offsets, md.shard_sizes
                shards.append({"rank": md.placement.rank(), "row": r0, "col": c0, "rows": n, "cols": m})
            col, parts = 0, []
            for key, d in self.parts[side]:
                parts.append([key, col, d])
                col += d
            rows = self.skeleton.n_users if side == "user" else self.skeleton.n_items
            tables[side] = {"rows": rows, "dim": self.dims[side], "parts": parts, "shards": shards}
        return {"world": self.world, "sharding": self.cfg.sharding, "table_optimizer": self.cfg.table_optimizer,
                "tables": tables, "dense": list(self.dense.state_dict())}

    def local_bytes(self) -> dict[str, int]:
        """Bytes this rank holds: its table shards, their optimizer state, the tower."""
        tables = sum(sh.tensor.numel() * sh.tensor.element_size()
                     for st in self._table_tensors().values() for sh in st.local_shards())
        opt = sum(sh.tensor.numel() * sh.tensor.element_size() for _, st in self._opt_sharded()
                  for sh in st.local_shards())
        dense = sum(p.numel() * p.element_size() for p in self.dense.parameters())
        return {"tables": tables, "table_optimizer": opt, "dense": dense}

    def _opt_sharded(self):
        """``(name, ShardedTensor)`` of the fused optimizer's state, in a fixed order."""
        for pkey, st in sorted(self.net.fused_optimizer.state_dict()["state"].items()):
            for k, v in sorted(st.items()):
                if hasattr(v, "local_shards"):
                    yield f"{pkey}.{k}", v

    # -- steps ---------------------------------------------------------------------------
    def _set_lr(self, epoch: int, step: int, n_steps: int) -> None:
        scale = self.lr_at(epoch, step, n_steps) / self.cfg.lr
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * scale
        for g in self.net.fused_optimizer.param_groups:
            g["lr"] = self.table_lr * scale
        self.net.fused_optimizer.step()  # hands the rate to the kernels (applied in the next backward)

    def _counts(self, n_local: int) -> torch.Tensor:
        t = torch.zeros(self.world, dtype=torch.int64, device=self.device)  # NCCL: device tensors only
        t[self.rank] = n_local
        dist.all_reduce(t)
        return t.cpu()

    def train_epoch(self, epoch: int, progress=None, task=None, max_steps: int | None = None) -> tuple[float, int]:
        cfg, bs = self.cfg, self.cfg.batch_size
        self.net.train()
        base = cfg.seed * 1_000_003 + epoch * 7_919 + self.rank * 104_729
        torch.manual_seed(base % (2**63 - 1))
        g = torch.Generator(device=self.device)
        g.manual_seed((base + 15_485_863) % (2**63 - 1))
        for m in self.dense.modules():
            if hasattr(m, "dropout_generator"):
                m.dropout_generator = g
        plan = self.sampler.plan(epoch)
        counts = self._counts(len(plan))
        n_steps = int(-(-counts.max() // bs))
        n_steps = min(n_steps, max_steps) if max_steps else n_steps
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        l2 = self.skeleton.hparams().get("l2", 0.0)
        for step in range(n_steps):
            lo = min(step * bs, len(plan))
            users, items, y = (t.to(self.device) for t in plan.batch(lo, min(lo + bs, len(plan))))
            n_global = int((counts - step * bs).clamp(min=0, max=bs).sum())
            self._set_lr(epoch, step, n_steps)
            logits, sq = self.net(users, items)
            loss_sum = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
            if l2:
                loss_sum = loss_sum + l2 * sq
            self.opt.zero_grad(set_to_none=True)
            (loss_sum / max(n_global, 1)).backward()  # tables: the sum over ranks' samples
            for p in self.dense_params:  # DDP averaged the tower's: the sum is W times that
                if p.grad is not None:
                    p.grad.mul_(self.world)
            self.opt.step()
            total += loss_sum.detach().double()  # no sync with a GPU
            if progress is not None and step % 10 == 0:
                progress.update(task, completed=step + 1, loss=float(loss_sum) / max(len(users), 1))
        n = int(counts.clamp(max=n_steps * bs).sum())
        return float(distributed.all_sum(total)) / max(n, 1), n

    # -- evaluation (every rank: its users' rows of the holdout) ----------------------------
    @torch.no_grad()
    def evaluate_sampled(self, holdout: HoldOut, batch_rows: int = 4096) -> dict[str, float]:
        self.net.eval()
        lo, hi = self.bounds[self.rank], self.bounds[self.rank + 1]
        mine = np.flatnonzero((holdout.users >= lo) & (holdout.users < hi))
        sizes = self._counts(len(mine))
        ranks = np.empty(len(mine), dtype=np.int64)
        for s in range(0, int(sizes.max()), batch_rows):  # every rank the same number of lookups
            sel = mine[s: s + batch_rows]
            c = holdout.candidates[sel]
            users = torch.as_tensor(np.repeat(holdout.users[sel], c.shape[1]), device=self.device)
            items = torch.as_tensor(np.where(c == PAD, 0, c).ravel(), device=self.device)
            scores = self.net(users, items)[0].float().cpu().numpy().reshape(c.shape)
            if len(sel):
                ranks[s: s + len(sel)] = pessimistic_rank(scores[:, 0], scores[:, 1:], c[:, 1:] != PAD)
        self.net.train()
        return summarize(self._gather(ranks, sizes), (10,))

    def _gather(self, ranks: np.ndarray, sizes: torch.Tensor | None = None) -> np.ndarray:
        """Every rank's per-user ranks, concatenated in rank order (on every rank)."""
        sizes = self._counts(len(ranks)) if sizes is None else sizes
        padded = torch.full((max(int(sizes.max()), 1),), -1, dtype=torch.int64)
        padded[: len(ranks)] = torch.from_numpy(np.asarray(ranks, dtype=np.int64))
        padded = padded.to(self.device)
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        return np.concatenate([g[: int(n)].cpu().numpy() for g, n in zip(gathered, sizes, strict=True)])

    # -- state -------------------------------------------------------------------------------
    def _local_weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for side, st in self._table_tensors().items():
            for sh in st.local_shards():
                (r0, c0) = sh.metadata.shard_offsets
                out[shardckpt.shard_key(side, r0, c0)] = sh.tensor.detach().clone()
        out.update({f"dense.{k}": v.detach().clone() for k, v in self.dense.state_dict().items()})
        return out

    def _load_local_weights(self, tensors: dict[str, torch.Tensor], where: Path | str) -> None:
        with torch.no_grad():
            for side, st in self._table_tensors().items():
                for sh in st.local_shards():
                    (r0, c0) = sh.metadata.shard_offsets
                    key = shardckpt.shard_key(side, r0, c0)
                    if key not in tensors or tensors[key].shape != sh.tensor.shape:
                        raise CheckpointError(f"{where}: lacks shard {key} {tuple(sh.tensor.shape)} "
                                              "(another sharding plan or world size?)")
                    sh.tensor.copy_(tensors[key])
            dense = {k[len("dense."):]: v for k, v in tensors.items() if k.startswith("dense.")}
            self.dense.load_state_dict(dense)

    def save_state(self, epoch: int) -> None:
        tensors = self._local_weights()
        for name, st in self._opt_sharded():
            for k, sh in enumerate(st.local_shards()):
                tensors[f"opt.{name}.{k}"] = sh.tensor
        dense_t, dense_meta = _opt_state_tensors(self.opt)
        tensors.update({f"dense_{k}": v for k, v in dense_t.items()})
        meta = {"epoch": str(epoch), "best": json.dumps(self.best), "elapsed": repr(self.elapsed),
                "optimizer": json.dumps(dense_meta), "world": str(self.world)}
        shardckpt.shard_dir(self.out).mkdir(parents=True, exist_ok=True)
        save_tensors(shardckpt.rank_file(self.out, "state", self.rank), tensors, metadata=meta)
        if self.main:
            shardckpt.write_index(self.out, {**self.layout(), "epoch": epoch})

    def load_state(self) -> None:
        from safetensors import safe_open

        index = shardckpt.read_index(self.out)
        if index["world"] != self.world or index["tables"] != self.layout()["tables"]:
            raise CheckpointError(f"{shardckpt.shard_dir(self.out)}: written by {index['world']} ranks with another "
                                  f"layout; resume with --nproc {index['world']} and the same sharding")
        path = shardckpt.rank_file(self.out, "state", self.rank)
        tensors = load_tensors(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        try:
            epoch, self.best = int(meta["epoch"]), json.loads(meta["best"])
            self.elapsed, dense_meta = float(meta["elapsed"]), json.loads(meta["optimizer"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: training state lacks metadata ({e})") from None
        self._load_local_weights(tensors, path)
        with torch.no_grad():
            for name, st in self._opt_sharded():
                for k, sh in enumerate(st.local_shards()):
                    sh.tensor.copy_(tensors[f"opt.{name}.{k}"])
        dense_t = {k[len("dense_"):]: v for k, v in tensors.items() if k.startswith("dense_opt.")}
        self.opt.load_state_dict(_opt_state_from(dense_t, dense_meta))
        self.start_epoch = epoch + 1
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():
            self.history = [r for r in (json.loads(x) for x in metrics.read_text().splitlines() if x.strip())
                            if r["epoch"] <= epoch]
            distributed.barrier()  # every rank has read it before rank 0 rewrites it
            if self.main:
                metrics.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def _keep_best(self) -> None:
        if self.out:
            shardckpt.shard_dir(self.out).mkdir(parents=True, exist_ok=True)
            save_tensors(shardckpt.rank_file(self.out, "best", self.rank), self._local_weights())
            if self.main:
                shardckpt.write_index(self.out, {**self.layout(), "epoch": self.best["epoch"]})
        else:
            self.best_local = self._local_weights()

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any] | None:
        cfg = self.cfg
        if resume:
            self.load_state()
        valid = self.dataset.valid
        bad = 0
        for r in self.history:
            bad = 0 if r["epoch"] == self.best["epoch"] else bad + 1
        n_batches = -(-self.sampler.n_samples() // cfg.batch_size)
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, disable=not self.progress, transient=True) as prog:
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                if distributed.broadcast_flag(bool(cfg.patience and bad >= cfg.patience), self.device):
                    break
                task = prog.add_task(f"{self.skeleton.name} (sharded) epoch {epoch}/{cfg.epochs}",
                                     total=n_batches, loss=float("nan"))
                t0 = time.perf_counter()
                loss, n = self.train_epoch(epoch, prog if self.progress else None, task)
                t_train = time.perf_counter() - t0
                prog.remove_task(task)
                record: dict[str, Any] = {"epoch": epoch, "loss": loss, "samples": n, "train_seconds": t_train}
                if valid is not None:
                    record["valid"] = self.evaluate_sampled(valid)
                    score = record["valid"][cfg.monitor]
                else:
                    score = float(epoch)
                record["seconds"] = time.perf_counter() - t0
                self.elapsed += record["seconds"]
                improved = distributed.broadcast_flag(score > self.best["score"], self.device)
                if improved:
                    self.best = {"epoch": epoch, "score": score, "valid": record.get("valid")}
                    bad = 0
                    self._keep_best()
                else:
                    bad += 1
                self.history.append(record)
                if self.main:
                    self._log(record, improved)
                if self.out:
                    if self.main:
                        with open(self.out / "metrics.jsonl", "a") as f:
                            f.write(json.dumps(record) + "\n")
                    self.save_state(epoch)
        distributed.barrier()
        return self.finish()

    def finish(self) -> dict[str, Any] | None:
        """Every rank: the best epoch's shards back in place, the sampled test protocol over the
        shards; rank 0: the tables assembled into ``model.safetensors`` (an ordinary run
        directory) and the full-ranking test on it; ``summary.json``."""
        if self.out and shardckpt.rank_file(self.out, "best", self.rank).exists():
            path = shardckpt.rank_file(self.out, "best", self.rank)
            self._load_local_weights(load_tensors(path), path)
        elif self.best_local is not None:
            self._load_local_weights(self.best_local, "the best epoch in memory")
        ds = self.dataset
        test = self.evaluate_sampled(ds.test)
        local = self.local_bytes()
        mem = torch.zeros(self.world, 4, dtype=torch.int64)
        mem[self.rank] = torch.tensor([local["tables"], local["table_optimizer"], local["dense"],
                                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024])
        mem = mem.to(self.device)
        dist.all_reduce(mem)
        mem = mem.cpu()
        distributed.barrier()  # every rank's best file is written and read
        test_full, model = None, None
        full_bytes = 4 * sum(t["rows"] * t["dim"] for t in self.layout()["tables"].values())
        if self.main and self.out and full_bytes <= CONVERT_FRACTION * _physical_memory():
            model = shardckpt.convert(self.out)  # an ordinary run directory: evaluate / recommend / serve
        elif self.main and self.out:
            self.console.print(f"[yellow]tables of {full_bytes / 2**30:.1f} GiB: not assembled here; run `ncf convert "
                               f"{self.out}` on a machine that holds them for an ordinary run directory")
        if ds.part is not None:  # each rank ranks its own test users against every item, on the converted model
            if distributed.broadcast_flag(model is not None, self.device):
                model = model if model is not None else load_model(self.out)
                ranks = full_ranks(model.eval(), ds.test, ds.seen(include_valid=True))
                test_full = summarize(self._gather(ranks), (10,), full=True)
        elif model is not None:
            test_full = evaluate(model, ds.test, "full", seen=ds.seen(include_valid=True))
        if not self.main:
            distributed.barrier()
            return None
        samples = sum(r["samples"] for r in self.history)
        train_s = sum(r["train_seconds"] for r in self.history)
        epoch_s = sum(r["seconds"] for r in self.history)
        summary = {
            "model": self.skeleton.name, "dataset": ds.name, "best_epoch": self.best["epoch"],
            "epochs_run": len(self.history), "valid": self.best["valid"], "test": test, "test_full": test_full,
            "train_seconds": self.elapsed,
            "samples_per_second": samples / train_s if train_s else None,
            "samples_per_second_end_to_end": samples / epoch_s if epoch_s else None,
            "device": str(self.device), "processes": self.world,
            "sharded": {"sharding": self.cfg.sharding, "table_optimizer": self.cfg.table_optimizer,
                        "table_lr": self.table_lr,
                        "plan": {s: [sh["rank"] for sh in t["shards"]] for s, t in self.layout()["tables"].items()},
                        "bytes_per_rank": [dict(zip(("tables", "table_optimizer", "dense", "max_rss"),
                                                    map(int, row), strict=True)) for row in mem.tolist()]},
        }
        if self.out:
            from ncf.checkpoint import atomic_write_json
            from ncf.train.plots import learning_curves

            atomic_write_json(self.out / "summary.json", summary)
            learning_curves(self.history, self.out / "curves.png", title=f"{self.skeleton.name} on {ds.name}")
        distributed.barrier()
        return summary
