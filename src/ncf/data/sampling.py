"""Negative sampling, vectorised, on whatever device the trainer uses.

Distribution: for a training interaction (u, i), each negative is uniform over the items
u has never interacted with in training. Drawn by rejection: a uniform item, tested
against u's CSR row (a dense bitmap where users x items fits in ``dense_limit`` bytes,
else a binary search over sorted ``u * n_items + i`` keys behind a one-hash bit filter),
redrawn while it is a positive.

An epoch is a random permutation of sample positions (``torch.randperm`` seeded by
``(seed, epoch)``), and the negative at position ``j`` comes from a counter-based hash
of ``(seed, epoch, j, attempt)``. So a batch is assembled when it is needed (no epoch's
worth of samples in memory: 4 bytes a sample for the permutation), any slice of the
epoch can be built alone (the shards of distributed ranks together are exactly one
process's epoch, whatever the batch size), and CPU and GPU draw the same negatives.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from ncf.errors import ConfigError

DENSE_LIMIT = 1 << 30  # bytes for the users x items bool bitmap


def sized_dense_limit(nnz: int) -> int:
    """A bitmap limit that grows with the interactions a structure holds (a rank's, a holdout's
    seen rows): dense up to 32 bytes an interaction (at least 64 MiB, at most ``DENSE_LIMIT``),
    so that a rank's membership test never costs more than its rows would as sorted keys by
    much; the answer is the same either way."""
    return min(DENSE_LIMIT, max(1 << 26, 32 * int(nnz)))
_M32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xor-shift-multiply, after C. Wellons' "lowbias32") on int64
    tensors holding values in [0, 2^32); multipliers below 2^31 keep products inside int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    return x ^ (x >> 16)


def _salt(seed: int, epoch: int, stream: int = 0) -> int:
    h = torch.tensor([(seed * 1_000_003 + epoch * 7_919 + stream * 104_729 + 12_345) & _M32])
    return int(hash32(hash32(h) ^ 0x9E3779B9))


def _key_hash(keys: torch.Tensor) -> torch.Tensor:
    """32 well-mixed bits of int64 keys in [0, 2^63)."""
    return hash32((keys & _M32) ^ hash32(keys >> 32))


class Membership:
    """``contains(users, items) -> bool tensor``: is (user, item) a known interaction?

    Small ``users x items`` grids get a dense bool bitmap (one byte a pair). Larger ones keep
    the sorted ``u * n_items + i`` keys (8 bytes an interaction) for an exact binary search,
    and in front of it a bit filter (8 to 16 bits an interaction, one hash): a pair whose bit
    is clear is certainly absent, so only the pairs whose bit is set (the positives and
    about 6-12% of the rest) pay for the binary search, whose probes into a large array
    miss the cache at every level.
    """

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
            # 2^bits filter bits, the smallest power of two >= 8 per key (>= 2^10, <= 2^32)
            self.filter_bits = min(32, max(10, (8 * max(len(keys), 1) - 1).bit_length()))
            flags = np.zeros(1 << self.filter_bits, dtype=bool)
            for lo in range(0, len(keys), 1 << 22):  # chunks: bounded temporaries
                flags[self._filter_pos(torch.from_numpy(keys[lo: lo + (1 << 22)])).numpy()] = True
            self.filter = torch.from_numpy(np.packbits(flags, bitorder="little")).to(self.device)

    def _filter_pos(self, keys: torch.Tensor) -> torch.Tensor:
        return _key_hash(keys) >> (32 - self.filter_bits)

    def flagged(self, keys: torch.Tensor) -> torch.Tensor:
        """Bool per int64 key: its filter bit is set (every present key, and the filter's
        false positives); sorted-key mode only."""
        pos = self._filter_pos(keys)
        return ((self.filter.index_select(0, pos >> 3).to(torch.int64) >> (pos & 7)) & 1).bool()

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users.to(torch.int64) * self.n_items + items.to(torch.int64)
        if self.dense:
            return self.table.index_select(0, keys)
        out = torch.zeros_like(keys, dtype=torch.bool)
        cand = self.flagged(keys).nonzero().squeeze(-1)
        if len(cand):
            k = keys.index_select(0, cand)
            at = torch.searchsorted(self.table, k).clamp_(max=len(self.table) - 1)
            out[cand] = self.table.index_select(0, at) == k
        return out


def draw_negatives(j: torch.Tensor, users: torch.Tensor, salt: int, n_items: int, membership: Membership,
                   skip: torch.Tensor | None = None) -> torch.Tensor:
    """The negative items at negative positions ``j`` (int64) of an epoch salted ``salt``, for
    ``users`` (as ``membership`` indexes them): a uniform item from a hash of ``(salt, j)``,
    re-hashed while it is one of the user's positives. Entries where ``skip`` is set get an
    arbitrary item and are not checked. A function of ``j`` alone (and the user's row), so a
    rank holding only some users' rows draws what one process holding all of them would."""
    x = hash32(hash32(j & _M32) ^ salt)
    items = (x * n_items) >> 32  # uniform over items (multiply-shift, no division)
    hit = membership.contains(users, items)
    if skip is not None:
        hit = hit > skip  # hit and not skip
    todo = torch.nonzero(hit).squeeze(-1)
    while len(todo):  # about (density of the user's row) of them each round
        xt = hash32(x.index_select(0, todo) ^ 0x5851F42D)
        it = (xt * n_items) >> 32
        x.index_copy_(0, todo, xt)
        items.index_copy_(0, todo, it)
        todo = todo[membership.contains(users.index_select(0, todo), it)]
    return items


class EpochPlan:
    """One epoch of a :class:`NegativeSampler`: ``len(plan)`` samples in shuffled order;
    ``plan.batch(lo, hi)`` builds samples ``lo:hi`` (int64 indexes, float labels)."""

    def __init__(self, sampler: NegativeSampler, epoch: int, pairwise: bool):
        s = sampler
        self.s, self.pairwise = s, pairwise
        self.salt = _salt(s.seed, epoch, 1)
        self.n_pos = 0 if pairwise else s.nnz
        self.n_negs = s.n_sampleable * (max(1, s.n_neg) if pairwise else s.n_neg)
        n = self.n_pos + self.n_negs
        if n >= 1 << 32:
            raise ConfigError(f"an epoch of {n} samples is more than this sampler supports (2^32)")
        self.perm = torch.randperm(n, generator=s.generator(epoch), device=s.device,
                                   dtype=torch.int32 if n < 1 << 31 else torch.int64)

    def __len__(self) -> int:
        return len(self.perm)

    def negatives(self, j: torch.Tensor, users: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """The negative items at negative positions ``j`` (int64) for ``users`` (entries
        where ``skip`` is set get an arbitrary item and are not checked)."""
        return draw_negatives(j, users, self.salt, self.s.n_items, self.s.membership, skip)

    def shard_batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1):
        """``(batch, n_global)`` of global step ``step``: the global batch covers samples
        ``[step * B * world, (step + 1) * B * world)`` and rank ``r`` takes its ``r``-th slice
        of ``B`` (short or empty at the end of the epoch); ``n_global`` is the global batch's
        size, which weights the loss. The trainer and :meth:`NegativeSampler.batches` both
        take their batches here."""
        if not 0 <= rank < world:
            raise ConfigError(f"shard rank {rank} is outside world size {world}")
        n = len(self)
        g = step * batch_size * world
        lo = min(g + rank * batch_size, n)
        return self.batch(lo, min(lo + batch_size, n)), max(0, min(batch_size * world, n - g))

    def batch(self, lo: int, hi: int) -> tuple[torch.Tensor, ...]:
        s = self.s
        k = self.perm[lo:hi].long()
        if self.pairwise:
            row = k % s.n_sampleable
            if s.rows is not None:
                row = s.rows.index_select(0, row).long()
            users = s.users.index_select(0, row).long()
            return users, s.items.index_select(0, row).long(), self.negatives(k, users)
        j = k - self.n_pos  # position among the negatives; < 0 for the positives
        is_pos = j < 0
        if s.rows is None:  # every interaction sampleable: negative j belongs to interaction j % nnz
            row = k % max(s.nnz, 1)
        elif s.n_sampleable == 0:  # every user saw every item: positives only (s.rows is empty)
            row = k
        else:
            row = torch.where(is_pos, k, s.rows.index_select(0, j.clamp(min=0) % max(s.n_sampleable, 1)).long())
        users, items = s.users.index_select(0, row).long(), s.items.index_select(0, row).long()
        if self.n_negs:
            items = torch.where(is_pos, items, self.negatives(j, users, skip=is_pos))
        return users, items, is_pos.to(torch.float32)


class NegativeSampler:
    """Per-epoch training samples from a users x items CSR matrix.

    Pointwise epochs hold every interaction (label 1) plus ``n_neg`` negatives each
    (label 0): ``nnz * (1 + n_neg)`` samples. Pairwise epochs hold ``(user, pos, neg)``
    triples, ``nnz * n_neg`` of them. Batches are int64 index tensors on ``device``.
    Users who interacted with every item have no negatives; their positives still train
    pointwise and are left out of pairwise triples (``n_saturated_users`` says how many).
    """

    def __init__(self, train: sp.csr_matrix, n_neg: int = 4, seed: int = 0,
                 device: torch.device | str = "cpu", dense_limit: int = DENSE_LIMIT):
        if n_neg < 0:
            raise ConfigError(f"n_neg must be >= 0, got {n_neg}")
        self.n_neg = n_neg
        self.seed = seed
        self.device = torch.device(device)
        m = train.tocsr()
        self.n_users, self.n_items = m.shape
        counts = np.diff(m.indptr)
        # int32 storage (indexes are widened batch by batch): 12 bytes an interaction
        users = np.repeat(np.arange(self.n_users, dtype=np.int32), counts)
        self.users = torch.from_numpy(users).to(self.device)
        self.items = torch.from_numpy(m.indices.astype(np.int32)).to(self.device)
        saturated = counts >= self.n_items
        self.n_saturated_users = int(saturated.sum())
        sampleable = np.flatnonzero(~saturated[users])
        self.n_sampleable = len(sampleable)
        # the sampleable interactions; None where that is all of them (the usual case)
        self.rows = None if self.n_sampleable == len(users) else torch.from_numpy(
            sampleable.astype(np.int32 if len(users) < 1 << 31 else np.int64)).to(self.device)
        self.membership = Membership(m, self.device, dense_limit)

    @property
    def nnz(self) -> int:
        return len(self.users)

    def generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1))
        return g

    def plan(self, epoch: int, pairwise: bool = False) -> EpochPlan:
        return EpochPlan(self, epoch, pairwise)

    def epoch_pointwise(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole shuffled epoch as ``(users, items, labels)``."""
        p = self.plan(epoch)
        return p.batch(0, len(p))

    def epoch_pairwise(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole shuffled epoch as ``(users, pos, neg)``."""
        p = self.plan(epoch, pairwise=True)
        return p.batch(0, len(p))

    def batches(self, epoch: int, batch_size: int, pairwise: bool = False,
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, ...]]:
        """Shuffled batches of the epoch. ``shard=(rank, world)``: global batch ``k`` covers
        samples ``[k * B * world, (k + 1) * B * world)`` and rank ``r`` takes its ``r``-th
        slice of ``B``, so the ranks' shards together are exactly one process's epoch at
        batch ``B * world``. Every rank gets the same number of batches; at the end of the
        epoch a rank's batch may be short or empty."""
        rank, world = shard
        if not 0 <= rank < world:
            raise ConfigError(f"shard rank {rank} is outside world size {world}")
        p = self.plan(epoch, pairwise)
        for step in range(self.n_batches(batch_size, pairwise, world)):
            yield p.shard_batch(step, batch_size, rank, world)[0]

    def n_samples(self, pairwise: bool = False) -> int:
        return self.n_sampleable * max(1, self.n_neg) if pairwise else self.nnz + self.n_sampleable * self.n_neg

    def n_batches(self, batch_size: int, pairwise: bool = False, world: int = 1) -> int:
        return -(-self.n_samples(pairwise) // (batch_size * world))
