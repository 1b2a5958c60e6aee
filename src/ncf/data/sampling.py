"""Negative sampling, vectorised, on whatever device the trainer uses.

Distribution: for a training interaction (u, i), each negative is uniform over the items
u has never interacted with in training. Drawn by rejection: draw uniformly over all
items, test membership in u's CSR row (a dense bitmap where users x items fits in
``dense_limit`` bytes, else a binary search over sorted ``u * n_items + i`` keys), redraw
the rejected ones. Fresh every epoch, seeded by ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

DENSE_LIMIT = 1 << 30  # bytes for the users x items bool bitmap


class Membership:
    """``contains(users, items) -> bool tensor``: is (user, item) a known interaction?"""

    def __init__(self, matrix: sp.csr_matrix, device: torch.device | str = "cpu",
                 dense_limit: int = DENSE_LIMIT):
        m = matrix.tocsr()
        m.sort_indices()
        self.n_users, self.n_items = m.shape
        rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        keys = rows * self.n_items + m.indices.astype(np.int64)
        self.device = torch.device(device)
        self.dense = self.n_users * self.n_items <= dense_limit
        if self.dense:
            bitmap = torch.zeros(self.n_users * self.n_items, dtype=torch.bool)
            bitmap[torch.from_numpy(keys)] = True
            self.table = bitmap.to(self.device)
        else:
            self.table = torch.from_numpy(keys).to(self.device)  # sorted (CSR order)

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users.to(torch.int64) * self.n_items + items.to(torch.int64)
        if self.dense:
            return self.table[keys]
        if len(self.table) == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(self.table, keys).clamp_(max=len(self.table) - 1)
        return self.table[pos] == keys


class NegativeSampler:
    """Per-epoch training samples from a users x items CSR matrix.

    ``epoch_pointwise(e)`` -> shuffled ``(users, items, labels)``: every interaction
    (label 1) plus ``n_neg`` negatives each (label 0), so ``nnz * (1 + n_neg)`` rows.
    ``epoch_pairwise(e)`` -> shuffled ``(users, pos, neg)`` triples, ``nnz * n_neg`` rows.
    Index tensors are int32 (memory: 12 bytes a pointwise sample) on ``device``.
    Users who interacted with every item have no negatives; their positives still train
    pointwise and are left out of pairwise triples (``n_saturated_users`` says how many).
    """

    def __init__(self, train: sp.csr_matrix, n_neg: int = 4, seed: int = 0,
                 device: torch.device | str = "cpu", dense_limit: int = DENSE_LIMIT):
        if n_neg < 0:
            raise ValueError(f"n_neg must be >= 0, got {n_neg}")
        self.n_neg = n_neg
        self.seed = seed
        self.device = torch.device(device)
        m = train.tocsr()
        self.n_users, self.n_items = m.shape
        counts = np.diff(m.indptr)
        users = np.repeat(np.arange(self.n_users, dtype=np.int32), counts)
        self.users = torch.from_numpy(users).to(self.device)
        self.items = torch.from_numpy(m.indices.astype(np.int32)).to(self.device)
        saturated = counts >= self.n_items
        self.n_saturated_users = int(saturated.sum())
        self.sampleable = torch.from_numpy(~saturated[users]).to(self.device)
        self.membership = Membership(m, self.device, dense_limit)

    @property
    def nnz(self) -> int:
        return len(self.users)

    def generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1))
        return g

    def negatives(self, users: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One uniform non-interacted item for each entry of ``users`` (int32)."""
        neg = torch.randint(0, self.n_items, users.shape, generator=g, device=self.device,
                            dtype=torch.int32)
        todo = torch.nonzero(self.membership.contains(users, neg)).squeeze(-1)
        while len(todo):
            redraw = torch.randint(0, self.n_items, todo.shape, generator=g, device=self.device,
                                   dtype=torch.int32)
            neg[todo] = redraw
            todo = todo[self.membership.contains(users[todo], redraw)]
        return neg

    def epoch_pointwise(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.generator(epoch)
        neg_users = self.users[self.sampleable].repeat(self.n_neg)
        neg_items = self.negatives(neg_users, g)
        users = torch.cat([self.users, neg_users])
        items = torch.cat([self.items, neg_items])
        labels = torch.zeros(len(users), dtype=torch.float32, device=self.device)
        labels[: self.nnz] = 1.0
        perm = torch.randperm(len(users), generator=g, device=self.device)
        return users[perm], items[perm], labels[perm]

    def epoch_pairwise(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.generator(epoch)
        users = self.users[self.sampleable].repeat(max(1, self.n_neg))
        pos = self.items[self.sampleable].repeat(max(1, self.n_neg))
        neg = self.negatives(users, g)
        perm = torch.randperm(len(users), generator=g, device=self.device)
        return users[perm], pos[perm], neg[perm]

    def batches(self, epoch: int, batch_size: int, pairwise: bool = False,
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, ...]]:
        """Shuffled batches of the epoch; ``shard=(rank, world)`` takes every world-th slice
        so that the shards of all ranks together are exactly one process's epoch."""
        tensors = self.epoch_pairwise(epoch) if pairwise else self.epoch_pointwise(epoch)
        rank, world = shard
        n = len(tensors[0])
        for start in range(rank * batch_size, n, batch_size * world):
            yield tuple(t[start: start + batch_size] for t in tensors)

    def n_batches(self, batch_size: int, pairwise: bool = False, world: int = 1) -> int:
        n = (int(self.sampleable.sum()) * max(1, self.n_neg)) if pairwise else (
            self.nnz + int(self.sampleable.sum()) * self.n_neg)
        return -(-n // (batch_size * world))
