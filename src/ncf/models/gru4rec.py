"""GRU4Rec-style baseline (Hidasi et al., ICLR 2016) on the sequence code of issue 21.

A GRU (``layers`` layers, hidden size ``dim``) reads a user's latest ``max_len`` training
items (embedded, dropout on the input); its output after each item, dotted with the item
embeddings, scores the next item. Training, scoring and checkpoints are those of
:class:`ncf.models.sequences.SequenceModel` (next-item targets over padded windows; sampled
negatives with log loss, or the full softmax). Windows are left-padded to ``max_len``
everywhere (training, ``score_all``, ``score_histories``), so the padding the GRU reads
before a short history is always the same.

Shapes: ``seq [B, L]`` -> ``encode`` ``[B, L, dim]``; scores ``[B, n_items]``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ncf.errors import ConfigError
from ncf.models.sequences import SequenceModel


class GRU4Rec(SequenceModel):
    name = "gru4rec"
    params: ClassVar[dict] = {**SequenceModel.base_params, "layers": 1}
    contract_options: ClassVar[dict] = {"epochs": 40}

    def __init__(self, n_users: int, n_items: int, layers: int = 1, **hp):
        super().__init__(n_users, n_items)
        hp = {**SequenceModel.base_params, **hp}
        if int(layers) != layers or layers < 1:
            raise ConfigError(f"gru4rec: layers must be >= 1, got {layers}")
        self._init_common(n_users, n_items, layers=int(layers), **hp)
        self.drop = nn.Dropout(self._hparams["dropout"])
        self.gru = nn.GRU(self.dim, self.dim, num_layers=int(layers), batch_first=True)
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, dim]
        if seq.shape[1] < self.max_len:  # always read max_len positions (same padding everywhere)
            seq = torch.nn.functional.pad(seq, (self.max_len - seq.shape[1], 0))
        out, _ = self.gru(self.drop(self.item_emb(seq)))
        return out
