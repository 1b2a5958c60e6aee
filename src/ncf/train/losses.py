"""Losses on logits: pointwise log loss and pairwise BPR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ncf.errors import ConfigError


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log loss of the NCF paper, on logits (numerically stable)."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def bpr_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: -log sigmoid(s(u, i+) - s(u, i-)), averaged."""
    return -F.logsigmoid(pos_logits - neg_logits).mean()


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}")
