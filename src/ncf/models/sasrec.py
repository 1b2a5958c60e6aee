"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A user's latest ``max_len`` training items (time order), embedded (scaled by sqrt(dim)) plus
learned position embeddings, go through ``blocks`` pre-norm transformer blocks with causal
self-attention (position ``t`` attends to the positions ``<= t`` holding an item) and a
position-wise feed-forward layer; the output at position ``t``, dotted with the (shared)
item embeddings, scores the item at ``t + 1``. Training and scoring are those of
:class:`ncf.models.sequences.SequenceModel`: next-item targets with the full softmax over the
catalogue (``loss="ce"``, the default: better on ml-100k's validation) or with one sampled
negative each and log loss as in the paper (``loss="bce"``; cheaper for large catalogues).

Shapes: ``seq [B, L]`` (item + 1, 0 = padding, left-padded) -> ``encode`` ``[B, L, dim]``;
``score_all(users)`` and ``score_histories(histories)`` -> ``[B, n_items]``.

State: ``item_emb [n_items + 1, dim]``, ``pos_emb [max_len, dim]``, the blocks, the final
layer norm, and ``seq [n_users, max_len]`` (each user's latest training items).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ncf.errors import ConfigError
from ncf.models.sequences import SequenceModel


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + FFN(LN(x)); ``mask [B, 1, L, L]``
    is True where a query may attend to a key."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [B, L, d]
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(SequenceModel):
    name = "sasrec"
    params: ClassVar[dict] = {**SequenceModel.base_params, "blocks": 2, "heads": 1}
    contract_options: ClassVar[dict] = {"epochs": 40}  # a quick fit for the registry's contract tests

    def __init__(self, n_users: int, n_items: int, blocks: int = 2, heads: int = 1, **hp):
        super().__init__(n_users, n_items)
        hp = {**SequenceModel.base_params, **hp}
        if int(blocks) != blocks or blocks < 1:
            raise ConfigError(f"sasrec: blocks must be >= 1, got {blocks}")
        if int(heads) != heads or heads < 1 or int(hp["dim"]) % int(heads):
            raise ConfigError(f"sasrec: heads must be >= 1 and divide dim ({hp['dim']}), got {heads}")
        self._init_common(n_users, n_items, blocks=int(blocks), heads=int(heads), **hp)
        d, p = self.dim, self._hparams["dropout"]
        self.pos_emb = nn.Embedding(self.max_len, d)
        self.emb_drop = nn.Dropout(p)
        self.blocks = nn.ModuleList(Block(d, int(heads), p) for _ in range(int(blocks)))
        self.ln = nn.LayerNorm(d)
        for w in self.parameters():
            if w.requires_grad and w.dim() == 2:
                nn.init.xavier_normal_(w)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, dim]
        n = seq.shape[1]
        present = seq > 0  # [B, L]
        pos = torch.arange(n, device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.dim) + self.pos_emb(pos + self.max_len - n)[None]
        x = self.emb_drop(x) * present[..., None]
        # query t sees keys s <= t that hold an item; every position sees itself (no empty row)
        causal = pos[None, :] <= pos[:, None]  # [L(q), L(k)]
        mask = (causal[None] & present[:, None, :]) | torch.eye(n, dtype=torch.bool, device=seq.device)[None]
        mask = mask[:, None]  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask) * present[..., None]
        return self.ln(x)
