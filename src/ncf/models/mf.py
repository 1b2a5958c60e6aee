"""Dot-product matrix factorisation with biases, as Rendle, Krichene, Zhang & Anderson
("Neural Collaborative Filtering vs. Matrix Factorization Revisited", RecSys 2020) train it.

logit(u, i) = b + b_u + b_i + p_u · q_i, with p, q of size ``factors``. Trained by the
Trainer with the log loss on sampled negatives (``neg`` per positive; the paper: 8), and an
L2 penalty ``l2`` on the embeddings *of each example in the batch* (vectors and biases of its
user and item, negatives included: the paper's ``reg * ||V||²``, 0.005). The vectors start
from N(0, ``init_std``²); ``init_std`` 0 means the paper's 0.1 / sqrt(factors).

Why not GMF or BPR-MF: GMF's logit is ``h · (p_u * q_i)`` (a learned output layer, no user
or item bias) and ``bpr`` has an item bias only and the pairwise loss; this model is the
plain dot product the paper argues a well-tuned baseline is.

Fold-in (issue 18): a user known only by a history gets the vector ``[p_u ; b_u]`` fitted by
Newton's method on the log loss (the logit is affine in it: ``linear_terms``), starting from
the trained row or the mean user; ``score_vectors`` scores such vectors like ``score_all``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import NEWTON_PRIOR, Model, newton_fold_in
from ncf.models.kernels import gather


class MF(Model):
    name = "mf"
    params: ClassVar[dict] = {"factors": 64, "l2": 0.005, "init_std": 0.0}
    config_fields = ("factors", "l2")
    supports_sparse = True  # every table is read through kernels.gather
    thread_parallel = True  # no buffers, no dropout: replicas per thread are safe
    foldin_tables = ("user_emb.weight", "user_bias.weight")  # fold-in vector [p_u ; b_u]

    def __init__(self, n_users: int, n_items: int, factors: int = 64, l2: float = 0.005, init_std: float = 0.0):
        super().__init__(n_users, n_items)
        if int(factors) != factors or factors < 1:
            raise ConfigError(f"mf: factors must be a positive integer, got {factors!r}")
        if l2 < 0:
            raise ConfigError(f"mf: l2 must be >= 0, got {l2!r}")
        if init_std < 0:
            raise ConfigError(f"mf: init_std must be >= 0 (0: 0.1 / sqrt(factors)), got {init_std!r}")
        factors = int(factors)
        self._hparams = {"factors": factors, "l2": float(l2), "init_std": float(init_std)}
        self.l2 = float(l2)
        std = float(init_std) or 0.1 / factors ** 0.5
        self.user_emb = nn.Embedding(n_users, factors)
        self.item_emb = nn.Embedding(n_items, factors)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.user_emb.weight, std=std)
        nn.init.normal_(self.item_emb.weight, std=std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def _rows(self, users: torch.Tensor, items: torch.Tensor):
        g = gather
        return (g(self.user_emb.weight, users, self.user_emb.sparse),
                g(self.item_emb.weight, items, self.item_emb.sparse),
                g(self.user_bias.weight, users, self.user_bias.sparse),
                g(self.item_bias.weight, items, self.item_bias.sparse))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # [B]
        p, q, bu, bi = self._rows(users, items)
        return (p * q).sum(-1) + bu.squeeze(-1) + bi.squeeze(-1) + self.bias

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:  # [B, n_items]
        return (self.user_emb(users) @ self.item_emb.weight.T + self.user_bias(users)
                + self.item_bias.weight.T + self.bias)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight.detach()

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """``l2`` times the squared norm of every example's user and item rows (vectors and
        biases), averaged over the batch (the Trainer multiplies by the batch size)."""
        if not self.l2:
            return None
        p, q, bu, bi = self._rows(users, items)
        sq = p.pow(2).sum() + q.pow(2).sum() + bu.pow(2).sum() + bi.pow(2).sum()
        return self.l2 * sq / len(users)

    # -- fold-in (issue 18) ---------------------------------------------------------------

    @torch.no_grad()
    def linear_terms(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits of ``items`` as affine functions of the fold-in vector ``[p_u ; b_u]``:
        ``(A [C, factors + 1], o [C])`` with A_i = [q_i ; 1], o_i = b + b_i (float64, exact)."""
        idx = torch.as_tensor(np.asarray(items, dtype=np.int64), device=self.item_emb.weight.device)
        q = self.item_emb.weight.detach()[idx].double()
        a = torch.cat([q, torch.ones(len(idx), 1, dtype=q.dtype, device=q.device)], dim=1)
        o = self.item_bias.weight.detach()[idx, 0].double() + self.bias.detach().double()
        return a.cpu().numpy(), o.cpu().numpy()

    @torch.no_grad()
    def fold_in(self, histories: list[torch.Tensor], init: torch.Tensor | None = None, steps: int = 30,
                lr: float = 0.05, negatives: int = 4, prior: float = NEWTON_PRIOR, max_history: int = 200,
                seed: int = 0) -> torch.Tensor:
        """[B, factors + 1] vectors ``[p_u ; b_u]`` fitted to ``histories`` (the latest
        ``max_history`` items of each) by Newton's method (``newton_fold_in``: the model's log
        loss against ``negatives`` uniform items per positive, seeded, plus ``prior`` * |u - init|²),
        starting from ``init`` ([B, factors + 1]; default: the mean user). ``steps`` and ``lr``
        (the gradient fold-in's) are not used: the solve converges in a few iterations."""
        b = len(histories)
        if init is None:
            init = self.mean_user_vector().expand(b, -1)
        init = init.detach().double().cpu().reshape(b, -1).numpy()
        out = np.empty(init.shape, dtype=np.float32)
        for row, h in enumerate(histories):
            h = np.asarray(torch.as_tensor(h, dtype=torch.int64).cpu(), np.int64)[-max_history:]
            if len(h) and (h.min() < 0 or h.max() >= self.n_items):
                raise ConfigError(f"history names items outside 0..{self.n_items - 1}")
            out[row] = newton_fold_in(self, h, init[row], prior=prior, negatives=negatives, seed=seed)
        return torch.from_numpy(out).to(self.item_emb.weight.device)

    @torch.no_grad()
    def score_vectors(self, vectors: torch.Tensor) -> torch.Tensor:  # [B, n_items]
        """Users given as fold-in vectors ``[p_u ; b_u]``, scored as ``score_all`` scores a row."""
        v = vectors.to(self.item_emb.weight.device, self.item_emb.weight.dtype)
        d = self.item_emb.embedding_dim
        return v[:, :d] @ self.item_emb.weight.T + v[:, d:] + self.item_bias.weight.T + self.bias
