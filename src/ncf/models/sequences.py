"""Next-item models over time-ordered histories: the sequence data and the shared
training loop (issue 21; :mod:`ncf.models.sasrec`, :mod:`ncf.models.gru4rec`).

Sequences hold item index + 1, with 0 as padding, **left**-padded: the latest item is
always the last column, so one position (``-1``) reads every user's representation.

Training data are *windows*: a user's history ``h[0..n-1]`` gives ``n - 1`` next-item
targets, cut from the end into rows of ``max_len + 1`` items (inputs ``row[:-1]``,
targets ``row[1:]``; consecutive windows share one item), so every target is predicted
once an epoch (``windows="all"``), or only the latest window (``windows="last"``, the
SASRec paper's truncation).

A :class:`SequenceModel` is a fitted model (``trainable = False``): ``fit(dataset, cfg)``
runs its own vectorised loop over padded windows (Adam, next-item loss: sampled negatives
with log loss, or the full softmax), validates every ``eval_every`` epochs on
``dataset.valid`` only and keeps the best epoch's weights. It stores each user's latest
``max_len`` training items (``seq [n_users, max_len]``, a frozen parameter) so that
``score_all(users)`` needs only the checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import Model

LOSSES = ("bce", "ce")
ORDERS = ("time", "index")
WINDOWS = ("all", "last")


def ordered_histories(matrix: sp.csr_matrix, timestamps: np.ndarray | None, order: str = "time",
                      what: str = "sequence model") -> tuple[np.ndarray, np.ndarray]:
    """Every user's training items in time order (ties: item index), as one flat array and
    its ``indptr``: user ``u`` is ``items[indptr[u]:indptr[u+1]]``, oldest first.

    Without timestamps the order is refused unless ``order="index"`` (item-index order:
    the Interactions keep no file order, since duplicates collapse on construction)."""
    if order not in ORDERS:
        raise ConfigError(f"{what}: order must be one of {', '.join(ORDERS)}, got {order!r}")
    m = matrix.tocsr()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    if timestamps is None:
        if order == "time":
            raise ConfigError(f"{what}: the training data has no timestamps, so there is no sequence to learn "
                             "from; pass --param order=index to use item-index order (a fixed, arbitrary "
                             "order: the Interactions keep no file order)")
        key = np.lexsort((m.indices, rows))
    else:
        key = np.lexsort((m.indices, timestamps, rows))
    return m.indices[key].astype(np.int64), m.indptr.astype(np.int64)


def latest(items: np.ndarray, indptr: np.ndarray, max_len: int) -> np.ndarray:
    """``[n_users, max_len]`` int64: each user's latest ``max_len`` items + 1, left-padded with 0."""
    n = len(indptr) - 1
    counts = np.diff(indptr)
    out = np.zeros((n, max_len), np.int64)
    rows = np.repeat(np.arange(n), counts)
    rev = np.repeat(indptr[1:], counts) - 1 - np.arange(len(items))  # 0 = the latest
    keep = rev < max_len
    out[rows[keep], max_len - 1 - rev[keep]] = items[keep] + 1
    return out


def windows(items: np.ndarray, indptr: np.ndarray, max_len: int, which: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """Training windows ``[n_windows, max_len + 1]`` (item + 1, left-padded with 0) and the
    user of each window. Window ``c`` of a user holds the targets whose distance from the
    user's latest item is in ``[c * max_len, (c + 1) * max_len)``, each preceded by its input."""
    if which not in WINDOWS:
        raise ConfigError(f"windows must be one of {', '.join(WINDOWS)}, got {which!r}")
    counts = np.diff(indptr)
    n_win = np.maximum(counts - 1, 0)
    n_win = -(-n_win // max_len)  # ceil
    if which == "last":
        n_win = np.minimum(n_win, 1)
    start = np.concatenate([[0], np.cumsum(n_win)])
    rows = np.zeros((int(start[-1]), max_len + 1), np.int64)
    users = np.repeat(np.arange(len(counts)), n_win)
    user_of = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(len(items)) - indptr[user_of]  # position in the user's history
    rev = counts[user_of] - 1 - pos  # 0 = the latest
    tgt = (pos >= 1) & (rev // max_len < n_win[user_of])
    w = start[user_of[tgt]] + rev[tgt] // max_len
    col = max_len - rev[tgt] % max_len
    t = np.flatnonzero(tgt)
    rows[w, col] = items[t] + 1
    rows[w, col - 1] = items[t - 1] + 1
    return rows, users


def pad_histories(histories: list[torch.Tensor], max_len: int, device: torch.device) -> torch.Tensor:
    """``[B, max_len]`` left-padded (item + 1) from 1-D item-index tensors, oldest first."""
    out = torch.zeros(len(histories), max_len, dtype=torch.int64)
    tails = [torch.as_tensor(h, dtype=torch.int64).reshape(-1)[-max_len:] for h in histories]
    lengths = torch.tensor([len(t) for t in tails], dtype=torch.int64)
    if int(lengths.sum()):
        flat = torch.cat(tails)
        rows = torch.repeat_interleave(torch.arange(len(tails)), lengths)
        ends = torch.cumsum(lengths, 0)
        within = torch.arange(len(flat)) - torch.repeat_interleave(ends - lengths, lengths)
        out[rows, max_len - torch.repeat_interleave(lengths, lengths) + within] = flat + 1
    return out.to(device)


class SequenceModel(Model):
    """Base of the next-item models: subclasses define ``encode(seq [B, L]) -> [B, L, dim]``
    (position ``t`` may see positions ``<= t`` only) and the item table ``item_emb``
    (``[n_items + 1, dim]``, row 0 = padding); scores are dot products with it."""

    trainable = False
    config_fields = ()
    # shared hyperparameters (subclasses add their architecture's)
    base_params: ClassVar[dict[str, Any]] = {
        "max_len": 50,
        "dim": 64,
        "dropout": 0.2,
        # defaults chosen on ml-100k's validation holdout (docs/RESULTS.md, issue 21): the full
        # softmax at lr 0.005 beat it and the paper's sampled log loss at lr 0.001
        "loss": "ce",  # "ce": full softmax over the catalogue; "bce": sampled negatives, log loss (the paper)
        "neg": 1,  # negatives per target with loss="bce"
        "epochs": 40,
        "lr": 0.005,
        "batch_size": 128,  # windows a step
        "l2": 0.0,  # Adam weight decay
        "windows": "all",
        "order": "time",
        "eval_every": 1,  # epochs between validations
        "patience": 8,  # validations without improvement before stopping; 0: never
    }

    def _init_common(self, n_users: int, n_items: int, **hp) -> None:
        what = self.name
        checks = [
            (int(hp["max_len"]) == hp["max_len"] and hp["max_len"] >= 1, f"max_len must be >= 1, got {hp['max_len']}"),
            (int(hp["dim"]) == hp["dim"] and hp["dim"] >= 1, f"dim must be >= 1, got {hp['dim']}"),
            (0 <= hp["dropout"] < 1, f"dropout must be in [0, 1), got {hp['dropout']}"),
            (hp["loss"] in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {hp['loss']!r}"),
            (hp["neg"] >= 1, f"neg must be >= 1, got {hp['neg']}"),
            (hp["epochs"] >= 1, f"epochs must be >= 1, got {hp['epochs']}"),
            (hp["lr"] > 0, f"lr must be > 0, got {hp['lr']}"),
            (hp["batch_size"] >= 1, f"batch_size must be >= 1, got {hp['batch_size']}"),
            (hp["l2"] >= 0, f"l2 must be >= 0, got {hp['l2']}"),
            (hp["windows"] in WINDOWS, f"windows must be one of {', '.join(WINDOWS)}, got {hp['windows']!r}"),
            (hp["order"] in ORDERS, f"order must be one of {', '.join(ORDERS)}, got {hp['order']!r}"),
            (hp["eval_every"] >= 1, f"eval_every must be >= 1, got {hp['eval_every']}"),
            (hp["patience"] >= 0, f"patience must be >= 0, got {hp['patience']}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{what}: {msg}")
        kinds = {k: type(v) for k, v in {**self.base_params, **self.params}.items()}
        self._hparams = {k: kinds[k](v) if kinds[k] in (int, float) else v for k, v in hp.items()}
        self.max_len, self.dim = self._hparams["max_len"], self._hparams["dim"]
        self.item_emb = nn.Embedding(n_items + 1, self.dim, padding_idx=0)
        # each user's latest max_len training items (+1; 0 = padding), set by fit
        self.seq = nn.Parameter(torch.zeros(n_users, self.max_len, dtype=torch.int64), requires_grad=False)
        self.stats: dict[str, Any] = {}

    # -- the network ---------------------------------------------------------------------
    def encode(self, seq: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, dim]
        raise NotImplementedError

    def _items(self) -> torch.Tensor:  # [n_items, dim]
        return self.item_emb.weight[1:]

    def represent(self, seq: torch.Tensor) -> torch.Tensor:
        """``[B, dim]``: the representation after each sequence's latest item (last column)."""
        return self.encode(seq)[:, -1]

    # -- scoring -------------------------------------------------------------------------
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # [B]
        uniq, inv = torch.unique(users, return_inverse=True)
        h = self.represent(self.seq[uniq])[inv]
        return (h * self._items()[items]).sum(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:  # [B, n_items]
        was = self.training
        self.eval()
        try:
            return self.represent(self.seq[users.to(self.seq.device)]) @ self._items().T
        finally:
            self.train(was)

    def training_history(self, user: int) -> torch.Tensor:
        """The user's latest ``max_len`` training items, oldest first (what ``score_all`` reads)."""
        s = self.seq[int(user)]
        return (s[s > 0] - 1).cpu()

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        """``[B, n_items]`` scores for users given only by their item-index histories
        (1-D int64, oldest first, possibly empty); the latest ``max_len`` items count."""
        if not len(histories):
            return torch.empty(0, self.n_items, device=self.seq.device)
        flat = torch.cat([torch.as_tensor(h, dtype=torch.int64).reshape(-1) for h in histories])
        if len(flat) and (int(flat.min()) < 0 or int(flat.max()) >= self.n_items):
            raise ConfigError(f"{self.name}: a history names an item outside 0..{self.n_items - 1}")
        was = self.training
        self.eval()
        try:
            return self.represent(pad_histories(histories, self.max_len, self.seq.device)) @ self._items().T
        finally:
            self.train(was)

    def item_embeddings(self) -> torch.Tensor:
        return self._items().detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        s = self.seq
        if s.numel() and (int(s.min()) < 0 or int(s.max()) > self.n_items):
            raise RuntimeError(f"{self.name}: stored sequences name items outside 0..{self.n_items - 1}")

    # -- training ------------------------------------------------------------------------
    def _loss(self, inp: torch.Tensor, tgt: torch.Tensor, users: torch.Tensor, member, gen) -> torch.Tensor:
        h = self.encode(inp)  # [B, L, d]
        mask = (tgt > 0) & (inp > 0)  # a target needs its input (a window's first column is input only)
        h, tgt, users = h[mask], tgt[mask], users[:, None].expand_as(mask)[mask]
        if self._hparams["loss"] == "ce":
            return F.cross_entropy(h @ self._items().T, tgt - 1)
        k = self._hparams["neg"]
        neg = torch.randint(0, self.n_items, (len(tgt), k), generator=gen).to(h.device)
        for _ in range(3):  # redraw negatives the user has interacted with (a few rounds)
            bad = member.contains(users[:, None].expand_as(neg).reshape(-1), neg.reshape(-1)).view(neg.shape)
            if not bool(bad.any()):
                break
            neg = torch.where(bad, torch.randint(0, self.n_items, neg.shape, generator=gen).to(h.device), neg)
        pos_logit = (h * self.item_emb(tgt)).sum(-1)
        neg_logit = (h[:, None, :] * self.item_emb(neg + 1)).sum(-1)
        return (F.softplus(-pos_logit).sum() + F.softplus(neg_logit).sum() / k) / len(tgt)

    def fit(self, dataset, cfg) -> SequenceModel:
        """Train on ``dataset.train`` (its time-ordered histories); pick the epoch by the
        validation holdout (``cfg.monitor``, sampled protocol), never test."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ncf.console import console
        from ncf.data.sampling import Membership
        from ncf.eval.evaluator import evaluate
        from ncf.train.trainer import resolve_device

        hp = self._hparams
        train = dataset.train
        if (train.n_users, train.n_items) != (self.n_users, self.n_items):
            raise ConfigError(f"{self.name}: built for {self.n_users} users / {self.n_items} items, "
                             f"the dataset has {train.n_users} / {train.n_items}")
        if getattr(cfg, "threads", 0):
            torch.set_num_threads(cfg.threads)
        device = resolve_device(getattr(cfg, "device", "cpu"))
        self.to(device)
        items, indptr = ordered_histories(train.matrix, train.timestamps, hp["order"], self.name)
        with torch.no_grad():
            self.seq.copy_(torch.from_numpy(latest(items, indptr, self.max_len)))
        rows_np, users_np = windows(items, indptr, self.max_len, hp["windows"])
        if not len(rows_np):
            raise ConfigError(f"{self.name}: no user has two training interactions: nothing to learn")
        rows, wusers = torch.from_numpy(rows_np).to(device), torch.from_numpy(users_np).to(device)
        member = Membership(train.matrix, device=device)
        seed = getattr(cfg, "seed", 0)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=hp["lr"], betas=(0.9, 0.98), weight_decay=hp["l2"])
        monitor = getattr(cfg, "monitor", "ndcg@10")
        valid = dataset.valid if dataset.valid is not None and len(dataset.valid) else None
        best = {"epoch": None, "score": -math.inf, "valid": None}
        best_state = None
        history, bad_rounds, samples, t_train = [], 0, 0, 0.0
        bs, n = hp["batch_size"], len(rows)
        n_targets = int(((rows[:, 1:] > 0) & (rows[:, :-1] > 0)).sum())
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        show = getattr(cfg, "progress", True)
        with Progress(*columns, console=console, transient=True, disable=not show) as prog:
            task = prog.add_task(f"{self.name}: {n} windows of {self.max_len}", total=hp["epochs"])
            for epoch in range(1, hp["epochs"] + 1):
                self.train()
                t0 = time.perf_counter()
                perm = torch.randperm(n, generator=gen).to(device)
                total = 0.0
                for s in range(0, n, bs):
                    idx = perm[s: s + bs]
                    batch = rows[idx]
                    loss = self._loss(batch[:, :-1], batch[:, 1:], wusers[idx], member, gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                t_train += time.perf_counter() - t0
                samples += n_targets
                record = {"epoch": epoch, "loss": total / n, "train_seconds": time.perf_counter() - t0}
                if valid is not None and (epoch % hp["eval_every"] == 0 or epoch == hp["epochs"]):
                    record["valid"] = evaluate(self, valid, "sampled")
                    record["valid_full"] = evaluate(self, valid, "full", seen=train.matrix)
                    score = record["valid"][monitor]
                    if score > best["score"]:
                        best = {"epoch": epoch, "score": score, "valid": record["valid"]}
                        best_state = copy.deepcopy(self.state_dict())
                        bad_rounds = 0
                    else:
                        bad_rounds += 1
                    text = (f"{self.name}: valid {monitor} {score:.4f} (best {best['score']:.4f} @ {best['epoch']})")
                    prog.update(task, description=text)
                    if show and not console.is_terminal:  # a log file gets one line a validation
                        console.print(f"epoch {epoch}: loss {record['loss']:.4f}, {record['train_seconds']:.1f} s; "
                                      f"{text}; full hr@10 {record['valid_full']['hr@10']:.4f}")
                history.append(record)
                prog.advance(task)
                if hp["patience"] and bad_rounds >= hp["patience"]:
                    break
        if best_state is not None:
            self.load_state_dict(best_state)
        self.eval()
        self.stats = {"best_epoch": best["epoch"], "epochs_run": len(history), "windows": n,
                      "targets_per_epoch": n_targets, "train_seconds": t_train,
                      "samples_per_second": samples / t_train if t_train else None, "history": history}
        console.print(f"{self.name}: {len(history)} epochs of {n} windows ({self.stats['targets_per_epoch']} "
                      f"targets), {t_train:.1f} s; best validation {monitor} "
                      f"{best['score']:.4f} at epoch {best['epoch']}" if best_state is not None else
                      f"{self.name}: {len(history)} epochs, {t_train:.1f} s (no validation holdout: last epoch kept)")
        return self
