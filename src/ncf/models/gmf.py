"""GMF: generalized matrix factorization (He et al. 2017, eq. 9).

logit(u, i) = h . (p_u * q_i) + b, with p, q of size ``factors``.
"""

from __future__ import annotations

import torch
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import Model
from ncf.models.kernels import gather


class GMF(Model):
    name = "gmf"
    params = {"factors": 8, "l2": 0.0}
    config_fields = ("factors", "l2")
    supports_sparse = True  # gradients of the embeddings may be sparse (nn.Embedding.sparse)
    foldin_tables = ("user_emb.weight",)
    thread_parallel = True  # no buffers; dropout only through Tower.dropout_generator: replicas per thread are safe

    def __init__(self, n_users: int, n_items: int, factors: int = 8, l2: float = 0.0):
        super().__init__(n_users, n_items)
        if factors < 1:
            raise ConfigError(f"factors must be >= 1, got {factors}")
        self._hparams = {"factors": factors, "l2": l2}
        self.l2 = l2
        self.user_emb = nn.Embedding(n_users, factors)
        self.item_emb = nn.Embedding(n_items, factors)
        self.predict = nn.Linear(factors, 1)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        nn.init.uniform_(self.predict.weight, -(3 / factors) ** 0.5, (3 / factors) ** 0.5)
        nn.init.zeros_(self.predict.bias)

    def h(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # [B, factors]
        return (gather(self.user_emb.weight, users, self.user_emb.sparse)
                * gather(self.item_emb.weight, items, self.item_emb.sparse))

    def forward(self, users, items):
        return self.predict(self.h(users, items)).squeeze(-1)

    @torch.no_grad()
    def score_all(self, users):
        u = self.user_emb(users) * self.predict.weight  # [B, f]
        return u @ self.item_emb.weight.T + self.predict.bias

    def item_embeddings(self):
        return self.item_emb.weight.detach()

    def regularization(self, users, items):
        if not self.l2:
            return None
        u = gather(self.user_emb.weight, users, self.user_emb.sparse)
        i = gather(self.item_emb.weight, items, self.item_emb.sparse)
        return self.l2 * (u.pow(2).sum() + i.pow(2).sum()) / len(users)
