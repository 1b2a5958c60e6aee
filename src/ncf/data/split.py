"""Leave-one-out splits and sampled-evaluation candidates.

Tie-breaking rule (documented, deterministic): a user's "latest" interaction is the one
with the largest timestamp; among interactions sharing that timestamp, the one with the
*largest item index* wins (item indexes follow the sorted raw item ids, so for integer
MovieLens ids: the largest MovieID). File order is not used: it is lost when duplicates
collapse, and a rule that depends on it would change with a re-sorted file. Without
timestamps the held-out interaction is drawn uniformly at random from the user's
interactions, seeded, as the NCF paper drew its validation item.

Users with fewer than ``min_train + 1`` interactions keep them all in training and get no
holdout; :func:`leave_one_out` returns how many there were.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ncf.data.interactions import Interactions
from ncf.data.sampling import Membership
from ncf.errors import ConfigError

PAD = -1  # padding in candidate matrices (a row with fewer distinct negatives)


@dataclass
class HoldOut:
    """One held-out item per user (``users[k]`` held out ``items[k]``) and its candidates.

    ``candidates`` is ``[n, 1 + n_neg]``: column 0 is the held-out item, the rest are
    distinct negatives, padded with ``PAD`` where fewer are available.
    """

    users: np.ndarray
    items: np.ndarray
    candidates: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Dataset:
    """A split dataset: ``train`` interactions plus valid/test holdouts (indexes into train's maps)."""

    name: str
    train: Interactions
    test: HoldOut | None
    valid: HoldOut | None
    n_interactions: int  # everything the source held (train + valid + test)
    report: dict = field(default_factory=dict)
    item_info: dict | None = None  # optional: {"titles": [...], "genres": [[...], ...]} by item index
    config: dict | None = None  # how it was made (DataConfig.to_dict()), saved with every run

    def without_test(self) -> Dataset:
        """This dataset with no test holdout: what fitting gets, so that it cannot read test."""
        return dataclasses.replace(self, test=None)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def seen(self, include_valid: bool = True) -> sp.csr_matrix:
        """Items each user interacted with outside the test holdout (train, plus valid)."""
        m = self.train.matrix
        if include_valid and self.valid is not None and len(self.valid):
            extra = sp.csr_matrix(
                (np.ones(len(self.valid), np.float32), (self.valid.users, self.valid.items)),
                shape=m.shape,
            )
            m = (m + extra).tocsr()
            m.data[:] = 1.0
        return m


def _latest_index(indptr: np.ndarray, indices: np.ndarray, times: np.ndarray | None,
                  rng: np.random.Generator) -> np.ndarray:
    """For each row with >= 1 entry, the position (into indices) of its latest entry."""
    n_rows = len(indptr) - 1
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(n_rows), counts)
    if times is None:
        offsets = (rng.random(n_rows) * np.maximum(counts, 1)).astype(np.int64)
        return indptr[:-1] + offsets
    order = np.lexsort((indices, times, rows))  # within a row: by time, then item
    last_in_row = indptr[1:] - 1
    return order[last_in_row]


def leave_one_out(
    data: Interactions,
    rng: np.random.Generator,
    min_train: int = 1,
) -> tuple[Interactions, np.ndarray, np.ndarray, int]:
    """Hold out each user's latest interaction (random where there are no timestamps).

    Users with fewer than ``min_train + 1`` interactions keep all of theirs in training
    and get no holdout; their count is returned.
    """
    m = data.matrix
    counts = np.diff(m.indptr)
    eligible = counts >= min_train + 1
    pos = _latest_index(m.indptr, m.indices, data.timestamps, rng)
    users = np.flatnonzero(eligible)
    held_pos = pos[eligible]
    items = m.indices[held_pos].astype(np.int64)
    keep = np.ones(m.nnz, dtype=bool)
    keep[held_pos] = False
    all_users, all_items = data.coo()
    train = Interactions.from_indices(
        all_users[keep], all_items[keep], data.user_map, data.item_map,
        None if data.timestamps is None else data.timestamps[keep],
        None if data.ratings is None else data.ratings[keep],
        meta=data.meta,
    )
    train.n_duplicates = data.n_duplicates
    return train, users, items, int((~eligible & (counts > 0)).sum())


def sample_candidates(
    seen: sp.csr_matrix,
    users: np.ndarray,
    items: np.ndarray,
    n_neg: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``[len(users), 1 + n_neg]``: the held-out item then ``n_neg`` distinct items the user
    never interacted with (``seen`` must include the held-out items), drawn uniformly without
    replacement. Users with fewer than ``n_neg`` unseen items get all of them, padded with
    ``PAD``. Vectorised over users: over-draw, reject seen items and repeats, top up."""
    n_items = seen.shape[1]
    member = Membership(seen)
    out = np.full((len(users), 1 + n_neg), PAD, dtype=np.int64)
    out[:, 0] = items
    available = np.minimum(n_items - np.diff(seen.indptr)[users], n_neg)
    filled = np.zeros(len(users), dtype=np.int64)
    rem = np.flatnonzero(filled < available)
    for _ in range(30):
        if not len(rem):
            break
        draw = rng.integers(0, n_items, size=(len(rem), 2 * n_neg + 16))
        ok = ~member.contains(
            torch.from_numpy(np.repeat(users[rem], draw.shape[1])), torch.from_numpy(draw.ravel())
        ).numpy().reshape(draw.shape)
        combined = np.concatenate([out[rem, 1:], draw], axis=1)
        valid = np.concatenate([out[rem, 1:] != PAD, ok], axis=1)
        order = np.argsort(combined, axis=1, kind="stable")
        srt = np.take_along_axis(combined, order, axis=1)
        dup = np.zeros_like(valid)
        np.put_along_axis(dup, order[:, 1:], srt[:, 1:] == srt[:, :-1], axis=1)
        valid &= ~dup
        valid &= np.cumsum(valid, axis=1) <= n_neg
        front = np.argsort(~valid, axis=1, kind="stable")[:, :n_neg]
        vals = np.take_along_axis(combined, front, axis=1)
        got = valid.sum(axis=1)
        vals[np.arange(n_neg)[None, :] >= got[:, None]] = PAD
        out[rem, 1:] = vals
        filled[rem] = got
        rem = rem[filled[rem] < available[rem]]
    for r in rem:  # users who saw nearly the whole catalogue: enumerate what is left
        u = users[r]
        row_seen = seen.indices[seen.indptr[u]: seen.indptr[u + 1]]
        have = out[r, 1: 1 + filled[r]]
        pool = np.setdiff1d(np.arange(n_items), np.concatenate([row_seen, have]))
        take = rng.permutation(pool)[: n_neg - filled[r]]
        out[r, 1 + filled[r]: 1 + filled[r] + len(take)] = take
    return out


def candidates_from_lists(users: np.ndarray, items: np.ndarray, negatives: np.ndarray | list[list[int]],
                          n_items: int, seen: sp.csr_matrix | None = None) -> tuple[np.ndarray, dict]:
    """Candidate matrix ``[n, 1 + W]`` from given negative lists (an NCF ``.test.negative``
    file; ``[n, W]`` padded with ``PAD``, or ragged lists): duplicates removed (the first
    kept), the positive never among its own negatives, items in ``seen`` dropped. The
    remaining negatives keep their order and move to the front, ``PAD`` after. Returns the
    matrix and counts of what was removed. Vectorised: no loop over rows."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if isinstance(negatives, list):
        width = max((len(n) for n in negatives), default=0)
        padded = np.full((len(negatives), width), PAD, dtype=np.int64)
        for r, row in enumerate(negatives):
            padded[r, : len(row)] = row
        negatives = padded
    neg = np.array(negatives, dtype=np.int64, copy=True)
    if neg.ndim != 2 or len(neg) != len(users) or len(items) != len(users):
        raise ConfigError(f"candidate lists: {len(users)} users, {len(items)} items and negatives of shape "
                         f"{neg.shape} do not line up")
    present = neg != PAD
    out_of_range = present & ((neg < 0) | (neg >= n_items))
    if out_of_range.any():
        r = int(np.flatnonzero(out_of_range.any(axis=1))[0])
        raise ConfigError(f"candidate row {r} (user {users[r]}): negative item index out of range 0..{n_items - 1}")
    is_pos = present & (neg == items[:, None])
    stats = {"rows_with_positive_in_negatives": int(is_pos.any(axis=1).sum())}
    present &= ~is_pos
    order = np.argsort(np.where(present, neg, -1), axis=1, kind="stable")
    srt = np.take_along_axis(np.where(present, neg, -1), order, axis=1)
    dup = np.zeros_like(present)
    np.put_along_axis(dup, order[:, 1:], (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != -1), axis=1)
    stats["duplicate_negatives"] = int((dup & present).sum())
    present &= ~dup
    stats["seen_negatives"] = 0
    if seen is not None and neg.size:
        rows = np.broadcast_to(users[:, None], neg.shape)
        hit = Membership(seen).contains(
            torch.from_numpy(np.ascontiguousarray(rows[present])), torch.from_numpy(neg[present])
        ).numpy()
        seen_mask = np.zeros_like(present)
        seen_mask[present] = hit
        stats["seen_negatives"] = int(hit.sum())
        present &= ~seen_mask
    front = np.argsort(~present, axis=1, kind="stable")
    kept = np.take_along_axis(np.where(present, neg, PAD), front, axis=1)
    out = np.concatenate([items[:, None], kept], axis=1)
    return out, stats
