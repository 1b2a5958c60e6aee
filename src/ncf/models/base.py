"""The Scorer contract and the base class every model derives from.

A Scorer has ``score(users, items) -> [B]`` and ``score_all(users) -> [B, n_items]``
(index tensors in, float scores out; larger is better). Neural models return logits;
the sigmoid is applied only where a probability is shown (``probability``).

History scoring (issue 18, shared with sasrec): ``score_histories(histories) -> [B, n_items]``
scores users known only by their item-index histories (oldest first, 1-D int64, possibly
empty). Item-based models compute it directly; models with user embedding tables name them
in ``foldin_tables`` and get it from ``fold_in``: a fresh user vector fitted by a few
gradient steps on the history (the item side and every other weight frozen), then the
model's own ``score_all`` with that vector in place of a table row. Models whose logit is an
affine function of that vector (``linear_terms``: MF) fit it by Newton's method instead
(``newton_fold_in``: a d x d solve per iteration, no autograd).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncf.errors import ConfigError


@runtime_checkable
class Scorer(Protocol):
    n_users: int
    n_items: int

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...

    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...


def pairs_from_rows(model, users: torch.Tensor, items: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """[B] scores of (user, item) pairs read from ``model.score_all`` of the distinct users, ``chunk``
    users at a time: for models whose scores come as whole rows (item-based, standardised blends)."""
    uniq, inv = torch.unique(users, return_inverse=True)
    out = torch.empty(len(users), device=users.device)
    for s in range(0, len(uniq), chunk):
        sel = (inv >= s) & (inv < s + chunk)
        scores = model.score_all(uniq[s: s + chunk])
        out[sel] = scores[inv[sel] - s, items[sel]]
    return out


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: ``MemAvailable`` of /proc/meminfo (Linux),
    else free physical pages (``os.sysconf``); None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_memory(name: str, estimate: int, advice: str = "") -> None:
    """Raise a ConfigError before a fit whose peak memory ``estimate`` (bytes, the model class's
    ``memory_estimate``) exceeds the memory available now; nothing happens where that is unknown."""
    free = available_memory()
    if free is not None and estimate > free:
        raise ConfigError(f"{name}: the fit needs about {_gb(estimate)} of memory, {_gb(free)} is available"
                          + (f"; {advice}" if advice else ""))


# L2 pull towards the starting vector of a Newton fold-in, per fold-in (the loss is a mean over
# positives); chosen on the ml-100k replay users (docs/RESULTS.md, issue 18)
NEWTON_PRIOR = 0.1


def newton_fold_in(terms, history: np.ndarray, init: np.ndarray, prior: float = NEWTON_PRIOR,
                   negatives: int = 4, iters: int = 10, seed: int = 0, samples: int = 64,
                   max_rows: int = 4096) -> np.ndarray:
    """[D] float32: the user vector minimising the BCE over ``history`` (positives) and
    ``negatives`` uniform items per positive (seeded), plus ``prior`` * |u - init|², for a model
    whose logits are affine in the user vector: ``terms.linear_terms(items) -> (A [C, D], o [C])``
    with ``logit(u, i) = o_i + A_i . u`` (``terms.n_items`` items; exact for MF and GMF, the
    first-order expansion for the MLP term of the NCF ranker). Newton's method: a D x D solve
    per iteration (no autograd; well under a millisecond of arithmetic for a history of 200
    items at D = 64), at most ``iters`` iterations over at most ``max_rows`` scored items."""
    history = np.unique(np.asarray(history, np.int64))
    if not len(history):
        return np.asarray(init, np.float32)
    rng = np.random.default_rng(seed)
    # many more negative samples than the training ratio, each weighted down to keep that ratio:
    # the same objective in expectation, far less noise for a history of a few items
    n_neg = min(max(samples * len(history), 256), max_rows)
    neg = rng.integers(0, terms.n_items, n_neg)
    neg = neg[~np.isin(neg, history)]
    a, o = terms.linear_terms(np.concatenate([history, neg]))
    y = np.zeros(len(a))
    y[:len(history)] = 1.0
    w = np.full(len(a), negatives * len(history) / max(1, len(neg)))
    w[:len(history)] = 1.0
    w /= len(history)
    u0 = np.asarray(init, np.float64)
    u = u0.copy()
    eye = np.eye(len(u))
    with _one_blas_thread():
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-(o + a @ u)))
            grad = a.T @ (w * (p - y)) + 2 * prior * (u - u0)
            hess = (a.T * (w * p * (1 - p))) @ a + 2 * prior * eye
            step = np.linalg.solve(hess, grad)
            u -= step
            if np.abs(step).max() < 1e-6:
                break
    return u.astype(np.float32)


_BLAS = None


def _one_blas_thread():
    """A context holding NumPy's BLAS to one thread: Newton's products are small (a few hundred
    rows by d), and on a busy machine a multi-threaded BLAS made one fold-in 25x slower
    (0.75 s instead of 27 ms at d = 64, load average 9). The controller is built once."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # ncf[serve] and ncf[ials] install it; without it BLAS keeps its threads
            return contextlib.nullcontext()
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class Model(nn.Module):
    """Base for every model: ids -> logits, plus the Scorer methods.

    Subclasses declare ``name``, ``params`` (hyperparameters with defaults: the only keys
    ``from_params`` accepts), and either are trained by SGD through the Trainer
    (``trainable = True``, ``forward`` differentiable) or fit in closed form / by a library
    (``trainable = False`` and ``fit(dataset, config)``). All state lives in parameters or
    buffers so that a checkpoint is a safetensors file.
    """

    name: ClassVar[str] = "model"
    trainable: ClassVar[bool] = True
    params: ClassVar[dict[str, Any]] = {}
    # which TrainConfig fields are hyperparameters of this model (copied into params)
    config_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ConfigError(f"need at least one user and one item, got {n_users}, {n_items}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(cls.params))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) for model {cls.name!r}: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(cls.params)) or 'none'})"
            )
        return {**cls.params, **params}

    @classmethod
    def from_params(cls, n_users: int, n_items: int, **params) -> Model:
        return cls(n_users, n_items, **cls.check_params(params))

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments (besides n_users, n_items), saved in config.json."""
        return dict(self._hparams)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # [B] logits
        raise NotImplementedError

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return self.forward(users, items)
        finally:
            self.train(was)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Default: every (user, item) pair through ``score``; models override when faster."""
        b = len(users)
        items = torch.arange(self.n_items, device=users.device)
        return self.score(users.repeat_interleave(self.n_items), items.repeat(b)).view(b, self.n_items)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def item_embeddings(self) -> torch.Tensor | None:
        """[n_items, d] vectors for item-item similarity, where the model has them."""
        return None

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """Optional L2 penalty on the batch's embeddings (added to the loss by the Trainer)."""
        return None

    # -- users known only by their histories (issue 18) --------------------------------

    # names (as in ``named_parameters``) of the user-indexed tables a fold-in replaces, in
    # the order their columns are concatenated into one fold-in vector
    foldin_tables: ClassVar[tuple[str, ...]] = ()

    def foldin_dim(self) -> int:
        params = dict(self.named_parameters())
        return sum(params[n].shape[1] for n in self.foldin_tables)

    def mean_user_vector(self) -> torch.Tensor:
        """[D] mean of the user tables' rows: the starting point of a fresh user's fold-in."""
        params = dict(self.named_parameters())
        return torch.cat([params[n].detach().float().mean(0) for n in self.foldin_tables])

    def _swapped(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every parameter detached (frozen), the user tables replaced by slices of ``vectors``."""
        params = {n: p.detach() for n, p in self.named_parameters()}
        start = 0
        for n in self.foldin_tables:
            d = params[n].shape[1]
            params[n] = vectors[:, start:start + d]
            start += d
        return params

    def fold_in(self, histories: list[torch.Tensor], init: torch.Tensor | None = None, steps: int = 30,
                lr: float = 0.05, negatives: int = 4, prior: float = 0.01, max_history: int = 200,
                seed: int = 0) -> torch.Tensor:
        """[B, D] user vectors (the ``foldin_tables`` rows, concatenated) fitted to ``histories``.

        Starts at ``init`` ([B, D]; default: the mean user) and takes ``steps`` Adam steps on
        the model's training loss (``default_loss``: BCE, or BPR) over the history's items
        (the latest ``max_history``) against ``negatives`` uniform items per positive, drawn
        from a generator seeded by ``seed`` (the same history gives the same vector), with
        an L2 pull of strength ``prior`` towards ``init``. Cost: bounded by ``steps *
        max_history * (1 + negatives)`` model evaluations, whatever the history's length.
        Nothing of the model changes (its parameters are read, never written)."""
        if not self.foldin_tables:
            raise NotImplementedError(f"model {self.name!r} has no user tables to fold a history into")
        dev = next(self.parameters()).device
        b = len(histories)
        if init is None:
            init = self.mean_user_vector().to(dev).expand(b, -1)
        init = init.detach().float().to(dev).reshape(b, -1).clone()
        hist = [torch.as_tensor(h, dtype=torch.int64, device=dev)[-max_history:] for h in histories]
        lengths = torch.tensor([len(h) for h in hist], device=dev)
        if b == 0 or int(lengths.sum()) == 0:
            return init
        rows = torch.repeat_interleave(torch.arange(b, device=dev), lengths)
        pos = torch.cat(hist)
        if int(pos.min()) < 0 or int(pos.max()) >= self.n_items:
            raise ConfigError(f"history names items outside 0..{self.n_items - 1}")
        gen = torch.Generator(device=dev).manual_seed(seed)
        bpr = getattr(self, "default_loss", "bce") == "bpr"
        u = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr)
        was = self.training
        self.eval()
        try:
            with torch.enable_grad():
                for _ in range(steps):
                    neg = torch.randint(self.n_items, (len(pos) * negatives,), generator=gen, device=dev)
                    users = torch.cat([rows, rows.repeat(negatives)])
                    logits = torch.func.functional_call(self, self._swapped(u), (users, torch.cat([pos, neg])))
                    lp, ln = logits[:len(pos)], logits[len(pos):]
                    if bpr:
                        loss = -F.logsigmoid(lp.repeat(negatives) - ln).sum()
                    else:
                        loss = (F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp), reduction="sum")
                                + F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln), reduction="sum"))
                    loss = loss / len(pos) + prior * (u - init).pow(2).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            self.train(was)
        return u.detach()

    @torch.no_grad()
    def score_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """[B, n_items] scores of users given as fold-in vectors [B, D] (``score_all`` with the
        user tables replaced; the model itself is not modified)."""
        if not self.foldin_tables:
            raise NotImplementedError(f"model {self.name!r} has no user tables")
        users = torch.arange(len(vectors), device=vectors.device)
        params = {f"model.{n}": t for n, t in self._swapped(vectors.float()).items()}
        return torch.func.functional_call(_ScoreAll(self), params, (users,))

    def training_history(self, user: int) -> torch.Tensor | None:
        """The user's training items in the order the model reads them (1-D int64, oldest first),
        for a model that keeps its own (sequence models: time order); None: use the training
        matrix's row (no order)."""
        return None

    def can_score_histories(self) -> bool:
        """Whether ``score_histories`` works for this model (its own, or fold-in through user tables)."""
        return bool(self.foldin_tables) or type(self).score_histories is not Model.score_histories

    def score_histories(self, histories: list[torch.Tensor], users: list[int | None] | None = None) -> torch.Tensor:
        """[B, n_items] scores of users known only by their item histories (see the module
        docstring). ``users``: the model's index of each history's user where the model knows
        them (None: a new user); models with user tables start those users' fold-in from their
        trained rows, models that score histories directly do not need it. Default:
        ``score_vectors(fold_in(histories))``."""
        if not self.foldin_tables:
            raise NotImplementedError(f"model {self.name!r} cannot score users by their histories")
        init = None
        if users is not None and any(u is not None for u in users):
            if len(users) != len(histories):
                raise ConfigError(f"{len(users)} users for {len(histories)} histories")
            params = dict(self.named_parameters())
            mean = self.mean_user_vector()
            init = torch.stack([mean if u is None else torch.cat([params[n].detach()[int(u)].float()
                                                                  for n in self.foldin_tables])
                                for u in users])
        return self.score_vectors(self.fold_in(histories, init=init))


class _ScoreAll(nn.Module):
    """``model.score_all`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.score_all(users)
