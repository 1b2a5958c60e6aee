"""Wide & deep (Cheng et al. 2016) over ids and side features, with cold-start scoring.

logit(u, i) = wide(u, i) + deep(u, i), trained jointly by the Trainer (same sampler, losses).

- **wide**: a linear model over sparse features: one weight per value of every user and
  item field, an item-id weight, and a weight per *pair* of values of chosen user x item
  field crosses (``crosses="occupation*genres,age*genres"``; default ``all`` user x item
  pairs). A multi-hot field contributes the sum of its active values' weights.
- **deep**: embeddings (``factors`` wide) of the user id, the item id and every field (a
  multi-hot field: the mean of its values' embeddings), concatenated into a ReLU tower of
  widths ``layers`` and a linear output.

Cold start: embedding row ``n_users`` is a learned "unknown user". During training each
example's user id is replaced by it with probability ``id_dropout``, so the model learns to
score from features alone; a user with no history is scored with that row and their
features (:meth:`score_all_features`). Feature values live in buffers indexed by user/item
index (``ufeat{k}``, ``ifeat{k}``: codes ``[n]`` or multi-hot ``[n, V]``); the fields'
vocabularies are hyperparameters, so ``load_model`` rebuilds the model from config.json.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ncf.data.features import Field, encode_features, side_features
from ncf.errors import ConfigError
from ncf.models.base import Model
from ncf.models.mlp import parse_layers


def _parse_crosses(crosses, user_fields: list[Field], item_fields: list[Field]) -> list[tuple[int, int]]:
    """"all" | "none" | "a*b,c*d" (or a list of "a*b") -> (user field, item field) positions."""
    uidx = {f.name: k for k, f in enumerate(user_fields)}
    iidx = {f.name: k for k, f in enumerate(item_fields)}
    if crosses in (None, "", "none"):
        return []
    if crosses == "all":
        return [(a, b) for a in range(len(user_fields)) for b in range(len(item_fields))]
    parts = crosses.split(",") if isinstance(crosses, str) else list(crosses)
    out = []
    for part in (p.strip() for p in parts if p.strip()):
        a, star, b = part.partition("*")
        if not star or a.strip() not in uidx or b.strip() not in iidx:
            raise ConfigError(
                f"cross {part!r}: write USER_FIELD*ITEM_FIELD with user fields {sorted(uidx) or 'none'} "
                f"and item fields {sorted(iidx) or 'none'} (or crosses=all / none)"
            )
        out.append((uidx[a.strip()], iidx[b.strip()]))
    return out


class WideDeep(Model):
    name = "widedeep"
    params = {"factors": 16, "layers": (64, 32, 16), "dropout": 0.0, "l2": 0.0, "id_dropout": 0.3,
              "crosses": "all", "user_fields": None, "item_fields": None,
              "user_features": None, "item_features": None}
    config_fields = ("factors", "layers", "dropout", "l2")

    def __init__(self, n_users, n_items, factors=16, layers=(64, 32, 16), dropout=0.0, l2=0.0, id_dropout=0.3,
                 crosses="all", user_fields=None, item_fields=None, user_features=None, item_features=None):
        super().__init__(n_users, n_items)
        layers = parse_layers(layers)
        if factors < 1:
            raise ConfigError(f"factors must be >= 1, got {factors}")
        if not 0 <= id_dropout <= 1:
            raise ConfigError(f"id_dropout must be in [0, 1], got {id_dropout}")
        self.user_fields = [f if isinstance(f, Field) else Field.from_dict(f) for f in user_fields or []]
        self.item_fields = [f if isinstance(f, Field) else Field.from_dict(f) for f in item_fields or []]
        self.crosses = _parse_crosses(crosses, self.user_fields, self.item_fields)
        self._hparams = {
            "factors": factors, "layers": list(layers), "dropout": dropout, "l2": l2, "id_dropout": id_dropout,
            "crosses": [f"{self.user_fields[a].name}*{self.item_fields[b].name}" for a, b in self.crosses],
            "user_fields": [f.to_dict() for f in self.user_fields],
            "item_fields": [f.to_dict() for f in self.item_fields],
            "user_features": None if user_features is None else str(user_features),
            "item_features": None if item_features is None else str(item_features),
        }
        self.l2, self.dropout, self.id_dropout = l2, dropout, id_dropout
        for prefix, fields, n in (("ufeat", self.user_fields, n_users), ("ifeat", self.item_fields, n_items)):
            for k, f in enumerate(fields):
                shape = (n, f.size) if f.kind == "multi" else (n,)
                self.register_buffer(f"{prefix}{k}", torch.zeros(shape, dtype=torch.float32 if f.kind == "multi"
                                                                 else torch.long))
        # every field's values one-hot in a [B, V] row (V: the fields' vocabularies end to end)
        for side, fields in (("u", self.user_fields), ("i", self.item_fields)):
            sizes = [f.size for f in fields]
            col_field = torch.repeat_interleave(torch.arange(len(fields)), torch.tensor(sizes, dtype=torch.long))
            block = torch.zeros(sum(sizes), len(fields) * factors)  # block-diagonal: field f -> its d columns
            for f in range(len(fields)):
                block[col_field == f, f * factors: (f + 1) * factors] = 1.0
            self.register_buffer(f"_{side}col", col_field, persistent=False)
            offsets = np.cumsum([0, *sizes])[:-1]
            self.register_buffer(f"_{side}off", torch.as_tensor(offsets, dtype=torch.long), persistent=False)
            self.register_buffer(f"_{side}block", block, persistent=False)
        vu, vi = self._ucol.numel(), self._icol.numel()
        # deep part: id embeddings and per-field embeddings (a block-diagonal [V, F*d] matrix)
        self.user_emb = nn.Embedding(n_users + 1, factors)  # row n_users: the unknown (cold) user
        self.item_emb = nn.Embedding(n_items, factors + 1)  # last column: the item's wide weight
        self.ufield_emb = nn.Parameter(torch.randn(vu, len(self.user_fields) * factors) * 0.01)
        self.ifield_emb = nn.Parameter(torch.randn(vi, len(self.item_fields) * factors) * 0.01)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        d_user = factors * (1 + len(self.user_fields))
        d_item = factors * (1 + len(self.item_fields))
        # the first layer split into user and item halves, so that score_all computes each once
        self.first_user = nn.Linear(d_user, layers[0], bias=False)
        self.first_item = nn.Linear(d_item, layers[0])
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:], strict=True))
        self.out = nn.Linear(layers[-1], 1)
        for lin in [self.first_user, self.first_item, *self.linears, self.out]:
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        # wide part: a weight per field value, and per value pair of the chosen crosses ([Vu, Vi], masked)
        self.ufield_w = nn.Parameter(torch.zeros(vu))
        self.ifield_w = nn.Parameter(torch.zeros(vi))
        self.cross_w = nn.Parameter(torch.zeros(vu, vi))
        mask = torch.zeros(vu, vi)
        for a, b in self.crosses:
            mask[(self._ucol == a)[:, None] & (self._icol == b)[None, :]] = 1.0
        self.register_buffer("_cross_mask", mask, persistent=False)

    # -- construction from a dataset -------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset, **params) -> WideDeep:
        """Fields and values from the dataset's side files (or the ``user_features`` /
        ``item_features`` CSV files); what could not be read is in ``dataset.report["features"]``."""
        params = cls.check_params(params)
        sf = side_features(dataset, params["user_features"], params["item_features"])
        params["user_fields"], params["item_fields"] = sf.users.fields, sf.items.fields
        model = cls(dataset.n_users, dataset.n_items, **params)
        model.set_features(sf.users.values, sf.items.values)
        if isinstance(getattr(dataset, "report", None), dict):
            dataset.report["features"] = sf.report()
        return model

    def set_features(self, user_values: list[np.ndarray], item_values: list[np.ndarray]) -> None:
        for prefix, values, fields in (("ufeat", user_values, self.user_fields),
                                       ("ifeat", item_values, self.item_fields)):
            if len(values) != len(fields):
                raise ConfigError(f"{prefix}: {len(values)} value arrays for {len(fields)} fields")
            for k, v in enumerate(values):
                buf = getattr(self, f"{prefix}{k}")
                if tuple(v.shape) != tuple(buf.shape):
                    raise ConfigError(f"feature {fields[k].name!r}: values of shape {tuple(v.shape)}, "
                                     f"expected {tuple(buf.shape)}")
                buf.copy_(torch.as_tensor(v))

    # -- pieces ----------------------------------------------------------------------
    def user_features(self, users: torch.Tensor) -> list[torch.Tensor]:
        return [getattr(self, f"ufeat{k}")[users] for k in range(len(self.user_fields))]

    def item_features(self, items: torch.Tensor | None = None) -> list[torch.Tensor]:
        bufs = [getattr(self, f"ifeat{k}") for k in range(len(self.item_fields))]
        return bufs if items is None else [b[items] for b in bufs]

    def encode_features(self, features: dict[str, str]) -> list[torch.Tensor]:
        """A new user's ``{"age": "25", ...}`` as feature tensors (batch of one); unknown
        names or values raise ``ValueError`` listing the valid ones."""
        dev = self.item_emb.weight.device
        return [torch.as_tensor(v, device=dev) for v in encode_features(self.user_fields, features)]

    def _onehot(self, feats: list[torch.Tensor], side: str, b: int) -> torch.Tensor:
        """[B, V] 0/1: the one-hot (or multi-hot) values of every field, end to end."""
        col, off = getattr(self, f"_{side}col"), getattr(self, f"_{side}off")
        x = torch.zeros(b, len(col), device=col.device)
        for k, v in enumerate(feats):
            if v.dtype == torch.long:
                x.scatter_(1, (v + off[k])[:, None], 1.0)
            else:
                x[:, off[k]: off[k] + v.shape[1]] = v
        return x

    def _field_deep(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """[B, F*d]: each field's embedding (a multi-hot field: the mean of its values')."""
        col, block = getattr(self, f"_{side}col"), getattr(self, f"_{side}block")
        emb = self.ufield_emb if side == "u" else self.ifield_emb
        if not len(col):
            return x.new_zeros(len(x), 0)
        n_fields = len(self.user_fields if side == "u" else self.item_fields)
        counts = torch.zeros(len(x), n_fields, device=x.device).index_add_(1, col, x)
        return (x / counts.clamp(min=1.0)[:, col]) @ (emb * block)

    def _user_side(self, uid, ufeats):
        """First layer's user half [B, h1], wide user score [B], user rows of the crosses [B, Vi]."""
        x = self._onehot(ufeats, "u", len(uid))
        deep = torch.cat([self.user_emb(uid), self._field_deep(x, "u")], dim=-1)
        return self.first_user(deep), x @ self.ufield_w, x @ (self.cross_w * self._cross_mask)

    def _item_side(self, items):
        """First layer's item half [I, h1], wide item score [I], item one-hot [I, Vi]."""
        x = self._onehot(self.item_features(items), "i", len(items))
        e = self.item_emb(items)
        deep = torch.cat([e[:, :-1], self._field_deep(x, "i")], dim=-1)
        return self.first_item(deep), e[:, -1] + x @ self.ifield_w, x

    def _tower(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        for lin in self.linears:
            if self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout)
            x = torch.relu(lin(x))
        return self.out(x).squeeze(-1)

    def logits(self, uid, ufeats, items) -> torch.Tensor:
        """[B] logits of (user embedding row ``uid``, user features, item) triples."""
        hu, wu, cross_rows = self._user_side(uid, ufeats)
        hi, wi, xi = self._item_side(items)
        return self._tower(hu + hi) + wu + wi + (cross_rows * xi).sum(dim=-1)

    def logits_all(self, uid, ufeats, chunk: int = 1 << 23) -> torch.Tensor:
        """[B, n_items] logits, the tower evaluated on [B', n_items, h1] chunks of users."""
        hi, wi, xi = self._item_side(torch.arange(self.n_items, device=uid.device))
        hu, wu, cross_rows = self._user_side(uid, ufeats)
        wide = wu[:, None] + wi[None, :] + cross_rows @ xi.T
        step = max(1, chunk // (self.n_items * hi.shape[1]))
        deep = torch.cat([self._tower(hu[s: s + step, None, :] + hi[None]) for s in range(0, len(uid), step)])
        return wide + deep

    # -- the Scorer contract -----------------------------------------------------------
    def forward(self, users, items):
        uid = users
        if self.training and self.id_dropout > 0:
            drop = torch.rand(len(users), device=users.device) < self.id_dropout
            uid = torch.where(drop, torch.full_like(users, self.n_users), users)
        return self.logits(uid, self.user_features(users), items)

    @torch.no_grad()
    def score_all(self, users):
        return self.logits_all(users, self.user_features(users))

    # -- cold start --------------------------------------------------------------------
    def _unknown(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.n_users, dtype=torch.long, device=self.item_emb.weight.device)

    @torch.no_grad()
    def score_features(self, ufeats: list[torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """[B] logits for users known only by their features (``ufeats``: [B] / [B, V] each)."""
        was = self.training
        self.eval()
        try:
            return self.logits(self._unknown(len(items)), ufeats, items)
        finally:
            self.train(was)

    @torch.no_grad()
    def score_all_features(self, ufeats: list[torch.Tensor], n: int | None = None) -> torch.Tensor:
        """[B, n_items] logits for B users known only by their features."""
        b = n if n is not None else (len(ufeats[0]) if ufeats else 1)
        was = self.training
        self.eval()
        try:
            return self.logits_all(self._unknown(b), ufeats)
        finally:
            self.train(was)

    def item_embeddings(self):
        """[n_items, d * (1 + item fields)]: the item's id and field embeddings, as the tower sees them."""
        items = torch.arange(self.n_items, device=self.item_emb.weight.device)
        x = self._onehot(self.item_features(items), "i", len(items))
        return torch.cat([self.item_emb(items)[:, :-1], self._field_deep(x, "i")], dim=-1).detach()

    def regularization(self, users, items):
        if not self.l2:
            return None
        return self.l2 * (self.user_emb(users).pow(2).sum() + self.item_emb(items).pow(2).sum()) / len(users)
