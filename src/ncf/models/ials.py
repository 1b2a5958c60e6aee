"""Implicit ALS (Hu, Koren & Volinsky, ICDM 2008) fitted by the ``implicit`` library, or, with
Rendle et al.'s frequency-scaled regulariser, by ncf's own conjugate-gradient ALS.

The factorisation is ``implicit.cpu.als.AlternatingLeastSquares`` (conjugate-gradient ALS,
seeded by ``cfg.seed``) unless ``frequency_scaling`` (ν) is set: ``implicit`` has one
regularisation for every row, so that objective is solved here (:func:`als_sweep`, in torch).
The factors are kept as frozen parameters, so that checkpoints, ``ncf evaluate`` and
``ncf recommend`` work as for every other model. score(u, i) = x_u · y_i.

Time limit: ``cfg.deadline`` (``ncf tune``) is checked after every iteration, through
``implicit``'s callback or ncf's own loop (:class:`ncf.deadline.Steps`): a fit that cannot finish
in time stops with :class:`ncf.errors.TrialTimeout`.

Threads: ``cfg.threads`` when set, else every core this process may use; BLAS is held to
one thread during the fit (implicit's own advice: its threads already use every core, and a
second thread pool on top of them slows it down). Needs ``pip install 'ncf[ials]'``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import ClassVar

import numpy as np
import torch

from ncf.deadline import Steps, deadline_of
from ncf.errors import ConfigError
from ncf.models.baselines import FittedModel, _frozen, binary_matrix


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


CG_STEPS = 3  # conjugate-gradient steps per row and sweep, warm-started (as implicit's solver does)


def _sparse(matrix, dtype: torch.dtype) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor of ``dtype`` (its stored values)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": nothing for a user to act on
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.as_tensor(matrix.indptr, dtype=torch.int64),
                                       torch.as_tensor(matrix.indices, dtype=torch.int64),
                                       torch.as_tensor(matrix.data, dtype=dtype), size=matrix.shape,
                                       check_invariants=False)


def row_regularization(counts, n_other: int, reg: float, unobserved_weight: float, nu: float) -> torch.Tensor:
    """Rendle et al.'s frequency-scaled L2 of each row: ``reg * (n_row + unobserved_weight * n_other) ** nu``
    (``n_row``: the row's observed pairs, ``n_other``: the other side's size)."""
    counts = torch.as_tensor(np.asarray(counts).ravel(), dtype=torch.float64)
    return (reg * (counts + unobserved_weight * n_other) ** nu).float()


def als_sweep(matrix, other: torch.Tensor, start: torch.Tensor, unobserved_weight: float, reg: torch.Tensor,
              steps: int = CG_STEPS) -> torch.Tensor:
    """One ALS half-step of Rendle et al.'s iALS objective for every row of the 0/1 CSR ``matrix``:
    row r's factors x minimise ``sum_{i seen} (x·y_i - 1)^2 + w sum_{all i} (x·y_i)^2 + reg_r |x|^2``
    (y: ``other``'s rows, w: ``unobserved_weight``), i.e. solve
    ``(Y_rᵀY_r + w YᵀY + reg_r I) x = Y_rᵀ1`` by ``steps`` conjugate-gradient steps from ``start``
    (exact after ``factors`` steps). Every row at once: the seen pairs' products through sparse
    sampled products (``torch.sparse.sampled_addmm``), never a dense users x items matrix."""
    x = _sparse(matrix, other.dtype)
    gram = other.T @ other
    lam = reg.to(other.dtype)[:, None]

    def apply(v):
        seen = torch.sparse.sampled_addmm(x, v, other.T, beta=0.0)  # v_r · y_i on the seen pairs
        return unobserved_weight * (v @ gram) + lam * v + seen @ other

    out = start.clone()
    r = x @ other - apply(out)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    for _ in range(steps):
        ap = apply(p)
        step = rs / (p * ap).sum(1, keepdim=True).clamp_min(1e-30)
        out = out + step * p
        r = r - step * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + rs_new / rs.clamp_min(1e-30) * p
        rs = rs_new
    return out


class ImplicitALS(FittedModel):
    """Weighted matrix factorisation for implicit feedback: weight ``alpha`` on seen pairs (target 1),
    1 on the others (target 0), ``regularization`` on the factors, ``iterations`` sweeps of ALS.

    ``unobserved_weight`` (Rendle et al., "Revisiting the Performance of iALS on Item
    Recommendation Benchmarks", RecSys 2022: a small weight, e.g. 0.3, with large ``factors``
    such as 192) parameterises the same objective their way: seen pairs weight 1, every pair a
    weight ``unobserved_weight`` on its square. Divided by that weight, it is implicit's objective
    with ``alpha = 1 + 1 / unobserved_weight`` and ``regularization / unobserved_weight`` (the
    seen pairs' target becomes ``1 / (1 + unobserved_weight)`` instead of 1: every score is scaled,
    not reordered, apart from the regulariser's effect). When it is set (> 0) it replaces ``alpha``;
    their frequency-scaled regulariser is not available through ``implicit``.

    ``frequency_scaling`` ν > 0 (with ``unobserved_weight``) is that regulariser: a user's L2 is
    ``regularization * (n_u + unobserved_weight * n_items) ** ν`` (an item's likewise with its
    users), so ``regularization`` is on another scale (about 0.01 at ν = 1 on ML-1M). ncf's own
    conjugate-gradient ALS (:func:`als_sweep`) then solves their objective as written, on
    ``cfg.threads`` torch threads.

    Defaults: that objective (ν = 1, ``unobserved_weight`` 0.01, ``regularization`` 0.003, 256
    factors), chosen on Gowalla's validation split; ``alpha`` (implicit's objective) needs
    ``unobserved_weight=0, frequency_scaling=0``."""

    name = "ials"
    # Rendle et al.'s recipe at the values chosen on a validation split carved from Gowalla's
    # training file (benchmarks/graph_filters_gowalla.py --valid): a large dimension, a small
    # unobserved weight, the frequency-scaled regulariser
    params: ClassVar[dict] = {"factors": 256, "regularization": 0.003, "alpha": 1.0, "iterations": 15,
                              "unobserved_weight": 0.01, "frequency_scaling": 1.0}
    # no TrainConfig fields: its ``factors`` default (8, NCF's) would override the model's own;
    # ``--factors`` still reaches the model as one of its ``params``
    config_fields = ()

    def __init__(self, n_users: int, n_items: int, factors: int = 256, regularization: float = 0.003,
                 alpha: float = 1.0, iterations: int = 15, unobserved_weight: float = 0.01,
                 frequency_scaling: float = 1.0):
        super().__init__(n_users, n_items)
        checks = [
            (int(factors) == factors and factors >= 1, f"factors must be a positive integer, got {factors!r}"),
            (regularization >= 0, f"regularization must be >= 0, got {regularization!r}"),
            (alpha > 0, f"alpha must be > 0, got {alpha!r}"),
            (int(iterations) == iterations and iterations >= 1,
             f"iterations must be a positive integer, got {iterations!r}"),
            (unobserved_weight >= 0, f"unobserved_weight must be >= 0 (0: use alpha), got {unobserved_weight!r}"),
            (frequency_scaling >= 0, f"frequency_scaling must be >= 0, got {frequency_scaling!r}"),
            (frequency_scaling == 0 or unobserved_weight > 0,
             f"frequency_scaling {frequency_scaling!r} needs unobserved_weight > 0 (Rendle et al.'s objective)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"ials: {msg}")
        self._hparams = {"factors": int(factors), "regularization": float(regularization),
                         "alpha": float(alpha), "iterations": int(iterations),
                         "unobserved_weight": float(unobserved_weight),
                         "frequency_scaling": float(frequency_scaling)}
        self.user_factors = _frozen(torch.zeros(n_users, int(factors)))
        self.item_factors = _frozen(torch.zeros(n_items, int(factors)))

    def fit(self, dataset, cfg=None) -> ImplicitALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        x = binary_matrix(dataset.train.matrix)
        if x.shape != (self.n_users, self.n_items):
            raise ConfigError(f"training matrix {x.shape} does not match the model ({self.n_users}, {self.n_items})")
        hp = self._hparams
        threads = int(getattr(cfg, "threads", 0) or 0) or _cores()
        if hp["frequency_scaling"] > 0:
            return self._fit_scaled(x, int(getattr(cfg, "seed", 0)), threads, deadline_of(cfg))
        alpha, reg = self.solver_params()
        # the time limit (ncf tune): checked after every iteration through implicit's callback
        steps = Steps(deadline_of(cfg), hp["iterations"], "ials")
        with threadpool_limits(1, "blas"):  # implicit checks this when the model is built
            als = AlternatingLeastSquares(
                factors=hp["factors"], regularization=reg, alpha=alpha,
                iterations=hp["iterations"], random_state=int(getattr(cfg, "seed", 0)), num_threads=threads,
            )
            als.fit(x, show_progress=sys.stderr.isatty(), callback=lambda it, *_: steps.done(it + 1))
        self._put("user_factors", np.asarray(als.user_factors, dtype=np.float32))
        self._put("item_factors", np.asarray(als.item_factors, dtype=np.float32))
        return self

    def _fit_scaled(self, x, seed: int, threads: int, deadline: float | None = None) -> ImplicitALS:
        """Rendle et al.'s objective with the frequency-scaled regulariser (:func:`als_sweep`);
        ``deadline`` (time.monotonic()) checked after every sweep (:class:`ncf.deadline.Steps`)."""
        hp = self._hparams
        w, nu, k = hp["unobserved_weight"], hp["frequency_scaling"], hp["factors"]
        gen = torch.Generator().manual_seed(seed)
        users = torch.randn(self.n_users, k, generator=gen) * (0.1 / k ** 0.5)
        items = torch.randn(self.n_items, k, generator=gen) * (0.1 / k ** 0.5)
        xt = x.T.tocsr()
        reg_u = row_regularization(np.diff(x.indptr), self.n_items, hp["regularization"], w, nu)
        reg_i = row_regularization(np.diff(xt.indptr), self.n_users, hp["regularization"], w, nu)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            steps = Steps(deadline, hp["iterations"], "ials")
            with torch.no_grad():
                for it in range(hp["iterations"]):
                    users = als_sweep(x, items, users, w, reg_u)
                    items = als_sweep(xt, users, items, w, reg_i)
                    steps.done(it + 1)
        finally:
            torch.set_num_threads(before)
        if not (torch.isfinite(users).all() and torch.isfinite(items).all()):
            raise RuntimeError(f"ials: the fit diverged (non-finite factors) at {hp}")
        self._put("user_factors", users)
        self._put("item_factors", items)
        return self

    def solver_params(self) -> tuple[float, float]:
        """(alpha, regularization) as ``implicit`` takes them (the unobserved weight converted)."""
        hp = self._hparams
        if hp["unobserved_weight"] > 0:
            return 1.0 + 1.0 / hp["unobserved_weight"], hp["regularization"] / hp["unobserved_weight"]
        return hp["alpha"], hp["regularization"]

    def forward(self, users, items):
        return (self.user_factors[users] * self.item_factors[items]).sum(-1)

    @torch.no_grad()
    def score_all(self, users):
        return self.user_factors[users] @ self.item_factors.T

    def item_embeddings(self):
        return self.item_factors.detach()

    @torch.no_grad()
    def fold_in(self, histories: list[torch.Tensor], init=None, **_) -> torch.Tensor:
        """[B, factors]: the ALS user step in closed form, as ``implicit`` solves it (confidence
        c = alpha on a seen item, 1 elsewhere): u = (YᵀY + (c - 1) Y_hᵀY_h + reg I)⁻¹ c Y_hᵀ1 for
        each history h, with the fit's alpha and regularisation (``solver_params``): what one
        more ALS sweep would give the user."""
        y = self.item_factors.double()
        if self._hparams["frequency_scaling"] > 0:
            return self._fold_in_scaled(histories, y)
        alpha, reg = self.solver_params()
        gram = y.T @ y + reg * torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
        out = torch.zeros(len(histories), y.shape[1], dtype=y.dtype, device=y.device)
        for row, h in enumerate(histories):
            h = torch.unique(torch.as_tensor(h, dtype=torch.int64, device=y.device))
            if len(h):
                yh = y[h]
                out[row] = torch.linalg.solve(gram + (alpha - 1) * yh.T @ yh, alpha * yh.sum(0))
        return out.float()

    def _fold_in_scaled(self, histories, y: torch.Tensor) -> torch.Tensor:
        """The user step of the frequency-scaled objective, exactly: (Y_hᵀY_h + w YᵀY + reg_h I)⁻¹ Y_hᵀ1."""
        hp = self._hparams
        w = hp["unobserved_weight"]
        gram = w * (y.T @ y)
        eye = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
        out = torch.zeros(len(histories), y.shape[1], dtype=y.dtype, device=y.device)
        for row, h in enumerate(histories):
            h = torch.unique(torch.as_tensor(h, dtype=torch.int64, device=y.device))
            if len(h):
                yh = y[h]
                reg = float(row_regularization([len(h)], self.n_items, hp["regularization"], w,
                                               hp["frequency_scaling"])[0])
                out[row] = torch.linalg.solve(gram + yh.T @ yh + reg * eye, yh.sum(0))
        return out.float()

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        return self.fold_in(histories) @ self.item_factors.T
