"""NeuMF: GMF and MLP fused by concatenating their last hidden layers (He et al. 2017, eq. 12).

Built from a GMF and an MLP by composition; ``from_pretrained`` copies both and weighs
their output layers by ``alpha`` and ``1 - alpha`` (the paper's pre-training).
"""

from __future__ import annotations

import torch
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import Model
from ncf.models.gmf import GMF
from ncf.models.mlp import MLP, parse_layers


class NeuMF(Model):
    name = "neumf"
    params = {"factors": 8, "layers": (64, 32, 16, 8), "dropout": 0.0, "l2": 0.0}
    config_fields = ("factors", "layers", "dropout", "l2")
    foldin_tables = ("gmf.user_emb.weight", "mlp.tower.user_emb.weight")
    supports_sparse = True  # gradients of the embeddings may be sparse (nn.Embedding.sparse)
    thread_parallel = True  # no buffers; dropout only through Tower.dropout_generator: replicas per thread are safe

    def __init__(self, n_users, n_items, factors: int = 8, layers=(64, 32, 16, 8),
                 dropout: float = 0.0, l2: float = 0.0):
        super().__init__(n_users, n_items)
        layers = parse_layers(layers)
        self._hparams = {"factors": factors, "layers": list(layers), "dropout": dropout, "l2": l2}
        self.gmf = GMF(n_users, n_items, factors, l2)
        self.mlp = MLP(n_users, n_items, layers, dropout, l2)
        # the sub-models' own output layers are unused inside NeuMF
        del self.gmf.predict, self.mlp.predict
        self.predict = nn.Linear(factors + layers[-1], 1)
        bound = (3 / (factors + layers[-1])) ** 0.5
        nn.init.uniform_(self.predict.weight, -bound, bound)
        nn.init.zeros_(self.predict.bias)

    @classmethod
    def from_pretrained(cls, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> NeuMF:
        if (gmf.n_users, gmf.n_items) != (mlp.n_users, mlp.n_items):
            raise ConfigError("GMF and MLP were trained on different user/item sets")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        g, m = gmf.hparams(), mlp.hparams()
        model = cls(gmf.n_users, gmf.n_items, g["factors"], m["layers"], m["dropout"], max(g["l2"], m["l2"]))
        with torch.no_grad():
            model.gmf.user_emb.weight.copy_(gmf.user_emb.weight)
            model.gmf.item_emb.weight.copy_(gmf.item_emb.weight)
            model.mlp.tower.load_state_dict(mlp.tower.state_dict())
            model.predict.weight.copy_(torch.cat([alpha * gmf.predict.weight, (1 - alpha) * mlp.predict.weight], dim=1))
            model.predict.bias.copy_(alpha * gmf.predict.bias + (1 - alpha) * mlp.predict.bias)
        return model

    def forward(self, users, items):
        h = torch.cat([self.gmf.h(users, items), self.mlp.h(users, items)], dim=-1)
        return self.predict(h).squeeze(-1)

    @torch.no_grad()
    def score_all(self, users):
        f = self.gmf.user_emb.embedding_dim
        w_g, w_m = self.predict.weight[:, :f], self.predict.weight[:, f:]
        scores = self.mlp.tower.all_items(users, project=w_m[0])  # [B, I]
        gmf_user = self.gmf.user_emb.weight.index_select(0, users.long()) * w_g  # [B, f]
        scores.addmm_(gmf_user, self.gmf.item_emb.weight.T)  # + the GMF part
        return scores.add_(self.predict.bias)

    def item_embeddings(self):
        return torch.cat([self.gmf.item_emb.weight, self.mlp.tower.item_emb.weight], dim=1).detach()

    def regularization(self, users, items):
        parts = [self.gmf.regularization(users, items), self.mlp.regularization(users, items)]
        parts = [p for p in parts if p is not None]
        return sum(parts) if parts else None
