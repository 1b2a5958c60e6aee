"""LightGCN (He, Deng, Wang, Li, Zhang & Wang, SIGIR 2020): collaborative filtering by
linear propagation of ID embeddings over the user-item graph, nothing else.

Ego embeddings ``E0`` (users then items, ``[n_users + n_items, factors]``, N(0, 0.1²) as the
authors' code initialises them) are smoothed over the symmetric-normalised bipartite graph
``Â = D^-1/2 A D^-1/2`` of the training interactions (``A = [[0, R], [Rᵀ, 0]]``): layer ``k``
is ``E_k = Â E_{k-1}`` and the final embedding is the mean of layers ``0..K``. A score is the
dot product of a user's and an item's final embedding.

Training (the paper's settings: ``factors`` 64, ``layers`` 3, Adam at ``lr`` 0.001, batches of
2048, ``l2`` 1e-4): an epoch draws as many (user, positive, negative) triples as there are
training interactions, the user uniform among users with training items, the positive
uniform among that user's items, the negative uniform among the items the user has not seen
(as the authors' sampler does). Every batch propagates the whole graph once (exact
gradients); the loss is the BPR loss averaged over the batch plus ``l2`` times half the
squared norm of the batch's *ego* embeddings divided by the batch size. The propagation is a
custom autograd function: ``Â`` is symmetric, so the backward pass is the same ``K`` sparse
products (float32 CSR) applied to the incoming gradient.

The epoch is chosen on validation (every ``eval_every`` epochs, stopping after ``patience``
validations without improvement): full-ranking recall@20 when the validation holdout has
several rows per user (a given or ratio split), otherwise the configured ``monitor`` of the
sampled protocol (what the Trainer uses). Without a validation holdout exactly ``epochs``
epochs run. A ``deadline`` on the config (``time.monotonic()``) is checked between epochs:
training stops there and the best epoch so far is kept.

After training the final user and item embeddings are stored as frozen parameters
(``user_final``, ``item_final``), so scoring is one matrix product and a checkpoint scores
without the graph (which lives only in memory, rebuilt by ``fit``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import Model, check_memory


def normalized_adjacency(matrix: sp.spmatrix) -> sp.csr_matrix:
    """``Â = D^-1/2 A D^-1/2`` (float32 CSR, ``[n_users + n_items]²``) of the bipartite graph
    ``A = [[0, R], [Rᵀ, 0]]`` of the binarised ``users x items`` matrix ``R``; a node without
    edges keeps a zero row (no division by zero)."""
    r = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0
    r.eliminate_zeros()
    a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = np.zeros_like(deg, dtype=np.float32)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    d = sp.diags(inv)
    out = (d @ a @ d).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def to_torch_csr(m: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor (float32, int64 indices)."""
    with warnings.catch_warnings():  # torch calls its sparse CSR support beta
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data.astype(np.float32)), size=m.shape)


def propagate_mean(graph: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
    """``[N, d]``: the mean of ``x, Âx, ..., Â^K x`` for ``graph`` = Â (sparse ``[N, N]``,
    symmetric) and ``K = layers`` (no autograd; see :class:`Propagate` for the differentiable one)."""
    out, h = x, x
    for _ in range(layers):
        h = torch.sparse.mm(graph, h)
        out = out + h
    return out / (layers + 1)


class Propagate(torch.autograd.Function):
    """``propagate_mean`` with its gradient: the operator is a polynomial of the symmetric
    ``Â``, hence self-adjoint, so the backward pass propagates the incoming gradient the same way."""

    @staticmethod
    def forward(ctx, graph: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
        ctx.graph, ctx.layers = graph, layers
        return propagate_mean(graph, x, layers)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, propagate_mean(ctx.graph, grad.contiguous(), ctx.layers), None


def sample_triples(indptr: torch.Tensor, indices: torch.Tensor, active: torch.Tensor, n: int, n_items: int,
                   member, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` (user, positive, negative) triples, each ``[n]`` int64: users uniform over ``active``
    (users with training items), the positive uniform among the user's items (CSR
    ``indptr``/``indices``), the negative uniform over items, redrawn while it is one of the
    user's (a few rounds; what remains after them is kept, a vanishing share on sparse data)."""
    users = active[torch.randint(len(active), (n,), generator=gen)]
    start, deg = indptr[users], indptr[users + 1] - indptr[users]
    pos = indices[start + (torch.rand(n, generator=gen) * deg).long().clamp_max(deg - 1)]
    neg = torch.randint(n_items, (n,), generator=gen)
    for _ in range(10):
        bad = member.contains(users, neg)
        if not bool(bad.any()):
            break
        neg = torch.where(bad, torch.randint(n_items, (n,), generator=gen), neg)
    return users, pos, neg


@torch.no_grad()
def topk_metrics(model, users: np.ndarray, items: np.ndarray, seen: sp.csr_matrix, k: int = 20,
                 batch_users: int = 1024) -> dict[str, float]:
    """recall@k and ndcg@k (``ncf.eval.topk``'s definitions: hits / the user's held-out items,
    binary gains with the ideal over min(n, k)) of the held-out (user, item) pairs ``users`` /
    ``items``, ranking every item outside ``seen`` by ``model.score_all``. The lists come from
    ``torch.topk`` rather than a full sort (``evaluate_topk``), which is what makes a validation
    of 30,000 users x 41,000 items affordable every few epochs on a CPU; exact score ties may
    order differently."""
    from ncf.eval.topk import ndcg_at_k, recall_at_k

    seen = seen.tocsr()
    rel = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=seen.shape)
    rel.data[:] = 1.0
    uniq = np.unique(users)
    hits = np.zeros((len(uniq), k), bool)
    dev = model.user_final.device
    for s in range(0, len(uniq), batch_users):
        u = uniq[s: s + batch_users]
        scores = model.score_all(torch.as_tensor(u, device=dev)).float()
        sub = seen[u]
        rows = torch.from_numpy(np.repeat(np.arange(len(u)), np.diff(sub.indptr))).to(dev)
        scores[rows, torch.from_numpy(sub.indices.astype(np.int64)).to(dev)] = -torch.inf
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.cpu().numpy().copy()
        r = rel[u]
        hits[s: s + len(u), :top.shape[1]] = np.asarray(r[np.arange(len(u))[:, None], top].todense(), bool)
    n_rel = np.diff(rel[uniq].indptr)
    return {f"recall@{k}": recall_at_k(hits, n_rel), f"ndcg@{k}": ndcg_at_k(hits, n_rel)}


class LightGCN(Model):
    name = "lightgcn"
    trainable = False  # its own loop: one graph propagation per batch, validation on full ranking
    config_fields = ()
    params: ClassVar[dict[str, Any]] = {
        "factors": 64,
        "layers": 3,
        "lr": 0.001,
        "l2": 1e-4,
        "batch_size": 2048,
        "epochs": 1000,  # the authors' code; early stopping on validation ends it much sooner
        "eval_every": 5,  # epochs between validations
        "patience": 10,  # validations without improvement before stopping; 0: never
    }
    # a quick fit for the shared contract tests (the toy dataset has 60 users)
    contract_options: ClassVar[dict[str, Any]] = {"epochs": 40, "lr": 0.01, "batch_size": 128, "eval_every": 5}

    def __init__(self, n_users: int, n_items: int, factors: int = 64, layers: int = 3, lr: float = 0.001,
                 l2: float = 1e-4, batch_size: int = 2048, epochs: int = 1000, eval_every: int = 5,
                 patience: int = 10):
        super().__init__(n_users, n_items)
        checks = [
            (int(factors) == factors and factors >= 1, f"factors must be a positive integer, got {factors!r}"),
            (int(layers) == layers and layers >= 0, f"layers must be an integer >= 0, got {layers!r}"),
            (lr > 0, f"lr must be > 0, got {lr!r}"),
            (l2 >= 0, f"l2 must be >= 0, got {l2!r}"),
            (int(batch_size) == batch_size and batch_size >= 1, f"batch_size must be >= 1, got {batch_size!r}"),
            (int(epochs) == epochs and epochs >= 1, f"epochs must be >= 1, got {epochs!r}"),
            (int(eval_every) == eval_every and eval_every >= 1, f"eval_every must be >= 1, got {eval_every!r}"),
            (int(patience) == patience and patience >= 0, f"patience must be >= 0, got {patience!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"lightgcn: {msg}")
        self._hparams = {"factors": int(factors), "layers": int(layers), "lr": float(lr), "l2": float(l2),
                         "batch_size": int(batch_size), "epochs": int(epochs), "eval_every": int(eval_every),
                         "patience": int(patience)}
        d = int(factors)
        self.embedding = nn.Parameter(torch.empty(n_users + n_items, d).normal_(std=0.1))  # E0: users, then items
        self.user_final = nn.Parameter(torch.zeros(n_users, d), requires_grad=False)
        self.item_final = nn.Parameter(torch.zeros(n_items, d), requires_grad=False)
        self.graph: torch.Tensor | None = None  # Â, set by fit (not saved: the finals score without it)
        self.stats: dict[str, Any] = {}
        # called with each epoch's record after it is logged (benchmarks draw curves with it);
        # returning True stops training there, the best epoch so far is kept
        self.on_epoch: Callable[[dict[str, Any]], bool | None] | None = None
        self.refresh()

    @classmethod
    def memory_estimate(cls, n_users: int, n_items: int, nnz: int, params: dict[str, Any]) -> int:
        """Bytes of peak memory of a fit: the graph (CSR, both directions), and per node of
        ``factors`` floats the ego table with its gradient and Adam moments, the finals and the
        best epoch's copies, and the propagation's ``layers + 2`` live intermediates (x2 in the
        backward pass), plus the sampler (a few int64 per interaction)."""
        p = cls.check_params(params)
        nodes = n_users + n_items
        graph = 2 * nnz * 12 + (nodes + 1) * 8
        tables = nodes * p["factors"] * 4 * (4 + 4 + 2 * (p["layers"] + 2))
        return int(graph * 2 + tables + nnz * 8 * 6)

    # -- scoring -------------------------------------------------------------------------
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # [B]
        return (self.user_final[users] * self.item_final[items]).sum(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:  # [B, n_items]
        return self.user_final[users.to(self.user_final.device)] @ self.item_final.T

    def item_embeddings(self) -> torch.Tensor:
        return self.item_final.detach()

    # -- propagation ---------------------------------------------------------------------
    def set_graph(self, matrix: sp.spmatrix) -> None:
        """Build ``Â`` from the ``users x items`` training matrix (on the model's device)."""
        if matrix.shape != (self.n_users, self.n_items):
            raise ConfigError(f"lightgcn: training matrix {matrix.shape} does not match the model "
                             f"({self.n_users}, {self.n_items})")
        self.graph = to_torch_csr(normalized_adjacency(matrix)).to(self.embedding.device)

    def propagated(self) -> torch.Tensor:
        """``[n_users + n_items, factors]`` final embeddings (differentiable in the ego table);
        without a graph (before ``fit``), the ego embeddings themselves."""
        if self.graph is None or self._hparams["layers"] == 0:
            return self.embedding
        return Propagate.apply(self.graph, self.embedding, self._hparams["layers"])

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the stored final embeddings from the ego table (and the graph, where set)."""
        out = self.propagated()
        self.user_final.copy_(out[:self.n_users])
        self.item_final.copy_(out[self.n_users:])

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(loss, BPR part as a float): the mean BPR loss of the triples (each ``[B]``, item
        indexes) plus ``l2`` * ½ (|e_u|² + |e_p|² + |e_n|²) of their ego embeddings / B."""
        out = self.propagated()
        iu, ip, ineg = users, pos + self.n_users, neg + self.n_users
        u = out[iu]
        bpr = F.softplus((u * out[ineg]).sum(-1) - (u * out[ip]).sum(-1)).mean()
        e = self.embedding
        reg = (e[iu].pow(2).sum() + e[ip].pow(2).sum() + e[ineg].pow(2).sum()) / (2 * len(users))
        return bpr + self._hparams["l2"] * reg, float(bpr.detach())

    # -- training ------------------------------------------------------------------------
    def _validate(self, valid, train_matrix, monitor: str) -> tuple[str, float, dict[str, float]]:
        """(metric name, value, all metrics) on the validation holdout: full-ranking recall@20
        where users have several held-out rows, else the sampled protocol's ``monitor``."""
        if len(np.unique(valid.users)) < len(valid.users):
            metrics = topk_metrics(self, valid.users, valid.items, train_matrix, 20)
            return "recall@20", metrics["recall@20"], metrics
        from ncf.eval.evaluator import evaluate

        metrics = evaluate(self, valid, "sampled")
        return monitor, metrics[monitor], metrics

    def fit(self, dataset, cfg=None) -> LightGCN:
        """Train on ``dataset.train``; choose the epoch on ``dataset.valid`` (never test)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ncf.console import console
        from ncf.data.sampling import Membership
        from ncf.train.trainer import resolve_device

        hp = self._hparams
        train = dataset.train
        if (train.n_users, train.n_items) != (self.n_users, self.n_items):
            raise ConfigError(f"lightgcn: built for {self.n_users} users / {self.n_items} items, "
                             f"the dataset has {train.n_users} / {train.n_items}")
        matrix = sp.csr_matrix(train.matrix)
        matrix.sum_duplicates()
        matrix.sort_indices()
        if matrix.nnz == 0:
            raise ConfigError("lightgcn: the training data has no interactions")
        check_memory(self.name, self.memory_estimate(self.n_users, self.n_items, matrix.nnz, self._hparams))
        if getattr(cfg, "threads", 0):
            torch.set_num_threads(cfg.threads)
        self.to(resolve_device(getattr(cfg, "device", "cpu")))
        dev = self.embedding.device
        self.set_graph(matrix)
        seed = getattr(cfg, "seed", 0)
        torch.manual_seed(seed)
        with torch.no_grad():
            self.embedding.normal_(std=0.1)
        gen = torch.Generator().manual_seed(seed)
        indptr = torch.from_numpy(matrix.indptr.astype(np.int64))
        indices = torch.from_numpy(matrix.indices.astype(np.int64))
        active = torch.from_numpy(np.flatnonzero(np.diff(matrix.indptr)).astype(np.int64))
        member = Membership(matrix)
        opt = torch.optim.Adam([self.embedding], lr=hp["lr"])
        monitor = getattr(cfg, "monitor", "ndcg@10")
        valid = getattr(dataset, "valid", None)
        valid = valid if valid is not None and len(valid) else None
        deadline = getattr(cfg, "deadline", None)
        best: dict[str, Any] = {"epoch": None, "score": -math.inf, "metric": None}
        best_state = None
        history: list[dict[str, Any]] = []
        bad, t_train, stopped = 0, 0.0, None
        n, bs = matrix.nnz, hp["batch_size"]
        show = getattr(cfg, "progress", True)
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console, transient=True, disable=not show) as prog:
            task = prog.add_task("lightgcn: training", total=hp["epochs"])
            for epoch in range(1, hp["epochs"] + 1):
                t0 = time.perf_counter()
                users, pos, neg = sample_triples(indptr, indices, active, n, self.n_items, member, gen)
                users, pos, neg = users.to(dev), pos.to(dev), neg.to(dev)
                total = 0.0
                for s in range(0, n, bs):
                    loss, bpr = self.batch_loss(users[s: s + bs], pos[s: s + bs], neg[s: s + bs])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += bpr * len(users[s: s + bs])
                seconds = time.perf_counter() - t0
                t_train += seconds
                record: dict[str, Any] = {"epoch": epoch, "loss": total / n, "train_seconds": seconds}
                self.refresh()
                if valid is not None and (epoch % hp["eval_every"] == 0 or epoch == hp["epochs"]):
                    metric, score, metrics = self._validate(valid, matrix, monitor)
                    record["valid"] = metrics
                    if score > best["score"]:
                        best = {"epoch": epoch, "score": score, "metric": metric}
                        best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
                        bad = 0
                    else:
                        bad += 1
                    text = f"lightgcn: valid {metric} {score:.4f} (best {best['score']:.4f} @ {best['epoch']})"
                    prog.update(task, description=text)
                    if show and not console.is_terminal:  # a log file gets one line a validation
                        console.print(f"epoch {epoch}: loss {record['loss']:.4f}, {seconds:.1f} s; {text}")
                history.append(record)
                prog.advance(task)
                if self.on_epoch is not None and self.on_epoch(record):
                    stopped = "callback"
                if valid is not None and hp["patience"] and bad >= hp["patience"]:
                    stopped = stopped or "patience"
                if deadline is not None and time.monotonic() >= deadline and epoch < hp["epochs"]:
                    stopped = stopped or "deadline"
                if stopped:
                    break
        if best_state is not None:
            self.load_state_dict(best_state)
        self.eval()
        self.stats = {"best_epoch": best["epoch"], "best_valid": best["score"] if best_state else None,
                      "valid_metric": best["metric"], "epochs_run": len(history), "stopped": stopped,
                      "train_seconds": t_train, "seconds_per_epoch": t_train / max(len(history), 1),
                      "history": history}
        if best_state is not None:
            console.print(f"lightgcn: {len(history)} epochs, {t_train:.1f} s; best validation {best['metric']} "
                          f"{best['score']:.4f} at epoch {best['epoch']}"
                          + (f" (stopped: {stopped})" if stopped else ""))
        else:
            console.print(f"lightgcn: {len(history)} epochs, {t_train:.1f} s (no validation holdout: last epoch kept)"
                          + (f" (stopped: {stopped})" if stopped else ""))
        return self
