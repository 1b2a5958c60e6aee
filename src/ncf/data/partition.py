"""Negative sampling partitioned by user, for runs whose ranks must not each hold every row.

Users are split into ``world`` contiguous ranges with about equal numbers of interactions
(:func:`user_bounds`); a :class:`UserShardSampler` holds only the CSR rows of its range plus a
few global counts. Its samples are exactly those of the same users in one process's
:class:`ncf.data.sampling.EpochPlan`: the positives are the range's interactions, and the
negative for interaction ``s`` (global index among the sampleable interactions) and repeat
``m`` sits at the same global position ``j = s + m * n_sampleable`` and is drawn by the same
counter-based hash (:func:`ncf.data.sampling.draw_negatives`), checked only against the
user's own row. So the union over ranks of an epoch is one process's epoch; only the order
differs (each rank shuffles its own samples, seeded by ``(seed, epoch, rank)``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ncf.data.sampling import Membership, _salt, draw_negatives, sized_dense_limit
from ncf.errors import ConfigError


def user_bounds(counts: np.ndarray, world: int) -> np.ndarray:
    """``[world + 1]`` user boundaries: rank ``r`` owns users ``bounds[r]:bounds[r + 1]``,
    ranges chosen so that each holds about ``sum(counts) / world`` interactions."""
    if world < 1:
        raise ConfigError(f"world must be >= 1, got {world}")
    cum = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
    targets = cum[-1] * np.arange(world + 1, dtype=np.float64) / world
    bounds = np.searchsorted(cum, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, len(counts)
    return np.maximum.accumulate(bounds)


class UserShardSampler:
    """Pointwise training samples of the users ``first_user : first_user + rows.shape[0]``.

    ``rows``: their CSR rows (``[n_local_users, n_items]``); ``nnz_before`` / ``sampleable_before``:
    interactions (all / of users with a negative to draw) of the users before the range;
    ``sampleable_total``: sampleable interactions of all users. Batches hold global user
    indexes; a user who interacted with every item has no negatives (as in ``NegativeSampler``).
    """

    def __init__(self, rows: sp.csr_matrix, first_user: int, sampleable_before: int, sampleable_total: int,
                 n_neg: int = 4, seed: int = 0, rank: int = 0, device: torch.device | str = "cpu",
                 dense_limit: int | None = None):
        if n_neg < 1:
            raise ConfigError(f"n_neg must be >= 1, got {n_neg}")
        m = rows.tocsr()
        self.n_items = m.shape[1]
        self.first_user, self.n_neg, self.seed, self.rank = first_user, n_neg, seed, rank
        self.sampleable_before, self.sampleable_total = sampleable_before, sampleable_total
        self.device = torch.device(device)
        counts = np.diff(m.indptr)
        users = np.repeat(np.arange(m.shape[0], dtype=np.int32), counts)
        self.users = torch.from_numpy(users).to(self.device)  # local user index
        self.items = torch.from_numpy(m.indices.astype(np.int32)).to(self.device)
        sampleable = np.flatnonzero(counts[users] < self.n_items)
        self.sampleable = torch.from_numpy(sampleable.astype(np.int64)).to(self.device)
        # a bitmap of the rank's users x all items only where it is not much larger than their rows
        self.membership = Membership(m, self.device, sized_dense_limit(m.nnz) if dense_limit is None else dense_limit)

    @classmethod
    def for_rank(cls, matrix: sp.csr_matrix, bounds: np.ndarray, rank: int, n_neg: int = 4, seed: int = 0,
                 device: torch.device | str = "cpu", counts: np.ndarray | None = None) -> UserShardSampler:
        """The sampler of ``rank`` for a users x items ``matrix`` split at ``bounds``: keeps only
        the rank's rows (the global counts come from the users' degrees). ``counts``: every
        user's degree, where ``matrix`` holds only the rank's rows (a rank-loaded dataset)."""
        m = matrix.tocsr()
        counts = np.diff(m.indptr) if counts is None else np.asarray(counts, dtype=np.int64)
        sampleable = np.where(counts < m.shape[1], counts, 0)
        lo, hi = int(bounds[rank]), int(bounds[rank + 1])
        return cls(m[lo:hi], lo, int(sampleable[:lo].sum()), int(sampleable.sum()), n_neg, seed, rank, device)

    @property
    def nnz(self) -> int:
        return len(self.users)

    def n_samples(self) -> int:
        return self.nnz + len(self.sampleable) * self.n_neg

    def plan(self, epoch: int) -> UserShardPlan:
        return UserShardPlan(self, epoch)


class UserShardPlan:
    """One epoch of a :class:`UserShardSampler`; ``batch(lo, hi)`` builds its samples ``lo:hi``."""

    def __init__(self, sampler: UserShardSampler, epoch: int):
        s = self.s = sampler
        self.salt = _salt(s.seed, epoch, 1)  # the salt of EpochPlan: the same negatives
        g = torch.Generator(device=s.device)
        g.manual_seed((s.seed * 1_000_003 + epoch * 7_919 + s.rank * 104_729 + 12_345) % (2**63 - 1))
        self.perm = torch.randperm(s.n_samples(), generator=g, device=s.device)

    def __len__(self) -> int:
        return len(self.perm)

    def batch(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(users, items, labels)``: global user and item indexes (int64), labels 1.0 / 0.0."""
        s = self.s
        k = self.perm[lo:hi]
        is_pos = k < s.nnz
        q = (k - s.nnz).clamp(min=0)  # local negative index: repeat q // n_local of sampleable q % n_local
        n_local = max(len(s.sampleable), 1)
        local = q % n_local
        j = s.sampleable_before + local + (q // n_local) * s.sampleable_total  # EpochPlan's position
        row = torch.where(is_pos, k, s.sampleable.index_select(0, local) if len(s.sampleable) else k)
        users = s.users.index_select(0, row).long()
        items = s.items.index_select(0, row).long()
        if len(s.sampleable):
            items = torch.where(is_pos, items, draw_negatives(j, users, self.salt, s.n_items, s.membership,
                                                              skip=is_pos))
        return users + s.first_user, items, is_pos.to(torch.float32)
