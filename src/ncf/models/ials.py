"""Implicit ALS (Hu, Koren & Volinsky, ICDM 2008) fitted by the ``implicit`` library.

The factorisation itself is ``implicit.cpu.als.AlternatingLeastSquares`` (conjugate-gradient
ALS, seeded by ``cfg.seed``); this module only feeds it the users x items training matrix
and keeps the factors as frozen parameters, so that checkpoints, ``ncf evaluate`` and
``ncf recommend`` work as for every other model. score(u, i) = x_u · y_i.

Threads: ``cfg.threads`` when set, else every core this process may use; BLAS is held to
one thread during the fit (implicit's own advice: its threads already use every core, and a
second thread pool on top of them slows it down). Needs ``pip install 'ncf[ials]'``.
"""

from __future__ import annotations

import os
import sys
from typing import ClassVar

import numpy as np
import torch

from ncf.errors import ConfigError
from ncf.models.baselines import FittedModel, _frozen, binary_matrix


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    their frequency-scaled regulariser is not available through ``implicit``."""

    name = "ials"
    params: ClassVar[dict] = {"factors": 8, "regularization": 0.01, "alpha": 1.0, "iterations": 15,
                              "unobserved_weight": 0.0}
    config_fields = ("factors",)

    def __init__(self, n_users: int, n_items: int, factors: int = 8, regularization: float = 0.01,
                 alpha: float = 1.0, iterations: int = 15, unobserved_weight: float = 0.0):
        super().__init__(n_users, n_items)
        checks = [
            (int(factors) == factors and factors >= 1, f"factors must be a positive integer, got {factors!r}"),
            (regularization >= 0, f"regularization must be >= 0, got {regularization!r}"),
            (alpha > 0, f"alpha must be > 0, got {alpha!r}"),
            (int(iterations) == iterations and iterations >= 1,
             f"iterations must be a positive integer, got {iterations!r}"),
            (unobserved_weight >= 0, f"unobserved_weight must be >= 0 (0: use alpha), got {unobserved_weight!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"ials: {msg}")
        self._hparams = {"factors": int(factors), "regularization": float(regularization),
                         "alpha": float(alpha), "iterations": int(iterations),
                         "unobserved_weight": float(unobserved_weight)}
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
        alpha, reg = self.solver_params()
        with threadpool_limits(1, "blas"):  # implicit checks this when the model is built
            als = AlternatingLeastSquares(
                factors=hp["factors"], regularization=reg, alpha=alpha,
                iterations=hp["iterations"], random_state=int(getattr(cfg, "seed", 0)), num_threads=threads,
            )
            als.fit(x, show_progress=sys.stderr.isatty())
        self._put("user_factors", np.asarray(als.user_factors, dtype=np.float32))
        self._put("item_factors", np.asarray(als.item_factors, dtype=np.float32))
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
        alpha, reg = self.solver_params()
        gram = y.T @ y + reg * torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
        out = torch.zeros(len(histories), y.shape[1], dtype=y.dtype, device=y.device)
        for row, h in enumerate(histories):
            h = torch.unique(torch.as_tensor(h, dtype=torch.int64, device=y.device))
            if len(h):
                yh = y[h]
                out[row] = torch.linalg.solve(gram + (alpha - 1) * yh.T @ yh, alpha * yh.sum(0))
        return out.float()

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        return self.fold_in(histories) @ self.item_factors.T
