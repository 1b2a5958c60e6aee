"""The Scorer contract and the base class every model derives from.

A Scorer has ``score(users, items) -> [B]`` and ``score_all(users) -> [B, n_items]``
(index tensors in, float scores out; larger is better). Neural models return logits;
the sigmoid is applied only where a probability is shown (``probability``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from ncf.errors import ConfigError


@runtime_checkable
class Scorer(Protocol):
    n_users: int
    n_items: int

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...

    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...


class Model(nn.Module):
    """Base for every model: ids -> logits, plus the Scorer methods.

    Subclasses declare ``name``, ``params`` (hyperparameters with defaults: the only keys
    ``from_params`` accepts), and either are trained by SGD through the Trainer
    (``trainable = True``, ``forward`` differentiable) or fit in closed form / by a library
    (``trainable = False`` and ``fit(dataset, config)``). All state lives in parameters or
    buffers so that a checkpoint is a safetensors file.
    """

    name: ClassVar[str] = "model"
    trainable: ClassVar[bool] = True
    params: ClassVar[dict[str, Any]] = {}
    # which TrainConfig fields are hyperparameters of this model (copied into params)
    config_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ConfigError(f"need at least one user and one item, got {n_users}, {n_items}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(cls.params))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) for model {cls.name!r}: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(cls.params)) or 'none'})"
            )
        return {**cls.params, **params}

    @classmethod
    def from_params(cls, n_users: int, n_items: int, **params) -> Model:
        return cls(n_users, n_items, **cls.check_params(params))

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments (besides n_users, n_items), saved in config.json."""
        return dict(self._hparams)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # [B] logits
        raise NotImplementedError

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return self.forward(users, items)
        finally:
            self.train(was)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Default: every (user, item) pair through ``score``; models override when faster."""
        b = len(users)
        items = torch.arange(self.n_items, device=users.device)
        return self.score(users.repeat_interleave(self.n_items), items.repeat(b)).view(b, self.n_items)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def item_embeddings(self) -> torch.Tensor | None:
        """[n_items, d] vectors for item-item similarity, where the model has them."""
        return None

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """Optional L2 penalty on the batch's embeddings (added to the loss by the Trainer)."""
        return None
