"""MLP: user and item embeddings concatenated into a ReLU tower (He et al. 2017, eq. 10).

``layers=(64, 32, 16, 8)``: the first size is the concatenated embedding (32 + 32), the
rest the tower's widths; the last width feeds a linear output to one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from ncf.models.base import Model


def parse_layers(layers) -> tuple[int, ...]:
    if isinstance(layers, str):
        try:
            layers = tuple(int(x) for x in layers.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"layers must be comma-separated integers like 64,32,16,8, got {layers!r}") from None
    layers = tuple(int(x) for x in layers)
    if len(layers) < 1 or any(x < 1 for x in layers):
        raise ValueError(f"layers must be positive integers, got {layers}")
    if layers[0] % 2:
        raise ValueError(f"the first layer size is the concatenated embedding and must be even, got {layers[0]}")
    return layers


class Tower(nn.Module):
    """Embeddings of size layers[0] // 2 for users and items, then Linear+ReLU layers."""

    def __init__(self, n_users: int, n_items: int, layers: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        half = layers[0] // 2
        self.user_emb = nn.Embedding(n_users, half)
        self.item_emb = nn.Embedding(n_items, half)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:], strict=True))
        for lin in self.linears:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.dropout = dropout
        self.out_dim = layers[-1]

    def forward(self, users, items):  # [B, layers[-1]]
        x = torch.cat([self.user_emb(users), self.item_emb(items)], dim=-1)
        return self.layers_from(x)

    def layers_from(self, x):
        for lin in self.linears:
            x = torch.relu(lin(x))
            if self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout)
        return x

    @torch.no_grad()
    def all_items(self, users: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
        """[B, n_items, out_dim] hidden vectors, with the first layer split into its user
        and item halves (W [p; q] = W_u p + W_i q) so that each half is computed once."""
        if not len(self.linears):
            u = self.user_emb(users)[:, None, :].expand(-1, self.item_emb.num_embeddings, -1)
            q = self.item_emb.weight[None].expand(len(users), -1, -1)
            return torch.cat([u, q], dim=-1)
        first = self.linears[0]
        half = self.user_emb.embedding_dim
        wu, wi = first.weight[:, :half], first.weight[:, half:]
        item_part = self.item_emb.weight @ wi.T + first.bias  # [I, h1]
        user_part = self.user_emb(users) @ wu.T  # [B, h1]
        x = torch.relu(user_part[:, None, :] + item_part[None, :, :])
        for lin in self.linears[1:]:
            x = torch.relu(lin(x))
        return x


class MLP(Model):
    name = "mlp"
    params = {"layers": (64, 32, 16, 8), "dropout": 0.0, "l2": 0.0}
    config_fields = ("layers", "dropout", "l2")

    def __init__(self, n_users, n_items, layers=(64, 32, 16, 8), dropout: float = 0.0, l2: float = 0.0):
        super().__init__(n_users, n_items)
        layers = parse_layers(layers)
        self._hparams = {"layers": list(layers), "dropout": dropout, "l2": l2}
        self.l2 = l2
        self.tower = Tower(n_users, n_items, layers, dropout)
        self.predict = nn.Linear(layers[-1], 1)
        nn.init.uniform_(self.predict.weight, -(3 / layers[-1]) ** 0.5, (3 / layers[-1]) ** 0.5)
        nn.init.zeros_(self.predict.bias)

    def h(self, users, items):
        return self.tower(users, items)

    def forward(self, users, items):
        return self.predict(self.h(users, items)).squeeze(-1)

    @torch.no_grad()
    def score_all(self, users):
        return self.predict(self.tower.all_items(users)).squeeze(-1)

    def item_embeddings(self):
        return self.tower.item_emb.weight.detach()

    def regularization(self, users, items):
        if not self.l2:
            return None
        t = self.tower
        return self.l2 * (t.user_emb(users).pow(2).sum() + t.item_emb(items).pow(2).sum()) / len(users)
