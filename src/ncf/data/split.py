"""Leave-one-out splits and sampled-evaluation candidates.

Tie-breaking rule: a user's "latest" interaction is the one with the largest timestamp;
among interactions sharing that timestamp (ml-100k: 415 of 943 users rated several films in
their last second) one is **drawn at random**, seeded, from the split's draws. Which of them
came last is unknown; a rule by id would pick an item by how ids are spelled (it did, before:
the largest item index, i.e. the highest MovieID, a film added to the catalogue late and
rarely watched, which made ml-100k's test harder than its data: EASE at λ 500, HR@10 0.578
against 0.657 over 3 seeds, and the same ratings with string ids split otherwise). File order
is not used: it is lost when duplicates collapse, and a rule that depends on it would change
with a re-sorted file. Without
timestamps the held-out interaction is drawn uniformly at random from the user's
interactions, seeded, as the NCF paper drew its validation item.

Where the draws come from (``DataConfig.split_draws``): ``"sequential"`` (the default) is one
seeded NumPy stream over all users in order; ``"per_user"`` (:class:`UserDraws`) is a
counter-based hash of (seed, purpose, user, draw number), so a user's held-out item and
candidates depend on that user's own interactions alone and a rank holding only some users
(:mod:`ncf.data.rankload`) draws exactly what one process holding all of them draws.

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
from ncf.data.sampling import _M32, Membership, _salt, hash32, sized_dense_limit
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

    def __repr__(self) -> str:  # not the arrays: a holdout of a large dataset printed whole runs to megabytes
        n = (np.asarray(self.candidates) != PAD).sum(axis=1) - 1 if len(self) else np.zeros(1, np.int64)
        negs = f"{n.min()}" if n.min() == n.max() else f"{n.min()} to {n.max()}"
        return f"HoldOut({len(self)} held-out items, each ranked among itself and {negs} negatives)"


class DrawnHoldOut(HoldOut):
    """A holdout whose ``candidates`` (what the sampled protocol alone needs) are drawn by
    ``draw()`` on first use: a given split's hundreds of thousands of held-out pairs take
    seconds to draw for, which a fit validated or tested by full ranking never needs."""

    def __init__(self, users: np.ndarray, items: np.ndarray, draw):  # noqa: D107
        self.users, self.items, self._draw, self._candidates = users, items, draw, None

    @property
    def candidates(self) -> np.ndarray:
        if self._candidates is None:
            self._candidates = self._draw()
        return self._candidates

    def __repr__(self) -> str:
        return f"DrawnHoldOut({len(self)} rows, candidates {'drawn' if self._candidates is not None else 'not drawn'})"


class LazyHoldOut(HoldOut):
    """A holdout made on first use (its ``users``, ``items``, ``candidates`` or ``len``) by
    ``load()``: a given split's test holdout, so that loading the dataset, fitting and tuning
    never read the test file; evaluation does. ``describe`` names what it holds."""

    def __init__(self, load, describe: str):  # noqa: D107 - no dataclass fields of its own
        self._load, self.describe, self._holdout = load, describe, None

    @property
    def loaded(self) -> bool:
        return self._holdout is not None

    def resolve(self) -> HoldOut:
        if self._holdout is None:
            self._holdout = self._load()
        return self._holdout

    users = property(lambda self: self.resolve().users)
    items = property(lambda self: self.resolve().items)
    candidates = property(lambda self: self.resolve().candidates)

    def __len__(self) -> int:
        return len(self.resolve())

    def __repr__(self) -> str:
        return f"LazyHoldOut({self.describe}{', loaded' if self.loaded else ', not read yet'})"


def negatives_missing(holdout: HoldOut) -> int:
    """Rows of ``holdout`` whose candidates hold no negative item: the sampled protocol would
    rank their held-out item alone (a hit at any cut-off)."""
    c = holdout.candidates
    return len(c) if c.shape[1] < 2 else int((c[:, 1:] == PAD).all(axis=1).sum())


@dataclass
class RankPart:
    """What a :class:`Dataset` loaded by one rank (:func:`ncf.data.rankload.load_rank_dataset`)
    knows of the others: the user ranges of every rank (``bounds``, as
    :func:`ncf.data.partition.user_bounds` draws them from ``train_counts``), every user's
    training interactions (``train_counts``), and the global sizes of training and holdouts."""

    rank: int
    world: int
    bounds: np.ndarray  # [world + 1]: rank r holds users bounds[r]:bounds[r + 1]
    train_counts: np.ndarray  # [n_users] training interactions of every user (int64)
    n_train: int
    n_valid: int | None  # validation rows over all ranks (None: no validation holdout)
    n_test: int

    @property
    def users(self) -> tuple[int, int]:
        return int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])


@dataclass
class Dataset:
    """A split dataset: ``train`` interactions plus valid/test holdouts (indexes into train's maps).

    ``part``: set where one rank loaded only its users (:class:`RankPart`): ``train``, ``valid``
    and ``test`` then hold those users' rows only (the id maps and shapes stay global)."""

    name: str
    train: Interactions
    test: HoldOut | None
    valid: HoldOut | None
    n_interactions: int  # everything the source held (train + valid + test)
    report: dict = field(default_factory=dict)
    item_info: dict | None = None  # optional: {"titles": [...], "genres": [[...], ...]} by item index
    config: dict | None = None  # how it was made (DataConfig.to_dict()), saved with every run
    part: RankPart | None = None  # one rank's users only (see above)

    def __repr__(self) -> str:  # sizes, not the arrays (a dataclass repr prints every one of them)
        held = ", ".join(f"{n} {len(h) if getattr(h, 'loaded', True) else '(a file not read yet)'}"
                         for n, h in (("valid", self.valid), ("test", self.test)) if h is not None)
        return (f"Dataset({self.name!r}: {self.n_users} users, {self.n_items} items, {self.train.nnz} training "
                f"interactions{', ' + held + ' held out' if held else ''})")

    @property
    def train_nnz(self) -> int:
        """Training interactions of all users (of all ranks where ``part`` is set)."""
        return self.part.n_train if self.part is not None else self.train.nnz

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


class UserDraws:
    """Counter-based draws of one purpose (``stream``): ``words(users, k)`` is 32 random bits
    from a hash of (seed, stream, user, k), so what a user gets never depends on other users."""

    def __init__(self, seed: int, stream: int):
        self.salt = _salt(seed, 0, stream)

    def words(self, users: np.ndarray, k: np.ndarray | int) -> np.ndarray:
        """``users`` and ``k`` broadcast together (a column of users and a row of ``k``: each
        user's key is hashed once)."""
        u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
        x = hash32(hash32((u & _M32) ^ self.salt) ^ ((u >> 32) & _M32))  # the user's key
        kk = torch.from_numpy(np.ascontiguousarray(k, dtype=np.int64))
        return hash32(hash32(x ^ (kk & _M32)) ^ 0x2545F491).numpy()

    def below(self, users: np.ndarray, k: np.ndarray | int, n: np.ndarray | int) -> np.ndarray:
        """Uniform integers in ``[0, n)`` (multiply-shift; ``n < 2^31``)."""
        return (self.words(users, k) * np.asarray(n, dtype=np.int64)) >> 32


CANDIDATE_BLOCK = 4096  # users whose candidates are drawn together (bounds the temporaries)

# the per_user streams of each purpose
TEST_PICK, VALID_PICK, VALID_CANDIDATES, TEST_CANDIDATES = 101, 102, 103, 104


def _latest_index(indptr: np.ndarray, indices: np.ndarray, times: np.ndarray | None,
                  rng: np.random.Generator | UserDraws) -> np.ndarray:
    """For each row with >= 1 entry, the position (into indices) of its latest entry (equal
    latest timestamps: one drawn at random)."""
    n_rows = len(indptr) - 1
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(n_rows), counts)
    if times is None:
        if isinstance(rng, UserDraws):
            offsets = rng.below(np.arange(n_rows), 0, np.maximum(counts, 1))
        else:
            offsets = (rng.random(n_rows) * np.maximum(counts, 1)).astype(np.int64)
        return indptr[:-1] + offsets
    if isinstance(rng, UserDraws):  # the entry's place in its row numbers the user's draw
        tie = rng.words(rows, np.arange(len(indices)) - indptr[:-1][rows])
    else:
        tie = rng.random(len(indices))
    order = np.lexsort((tie, times, rows))  # within a row: by time, equal times in random order
    last_in_row = indptr[1:] - 1
    return order[last_in_row]


def leave_one_out(
    data: Interactions,
    rng: np.random.Generator | UserDraws,
    min_train: int = 1,
) -> tuple[Interactions, np.ndarray, np.ndarray, int]:
    """Hold out each user's latest interaction (random where there are no timestamps: from
    ``rng``, a NumPy stream over all users, or a :class:`UserDraws`).

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
    rng: np.random.Generator | UserDraws,
    first_row: int = 0,
) -> np.ndarray:
    """``[len(users), 1 + n_neg]``: the held-out item then ``n_neg`` distinct items the user
    never interacted with (``seen`` must include the held-out items), drawn uniformly without
    replacement. Users with fewer than ``n_neg`` unseen items get all of them, padded with
    ``PAD``. Vectorised over users: over-draw, reject seen items and repeats, top up.

    ``rng``: a NumPy stream over all users in order, or :class:`UserDraws` (user ``u``'s draws
    numbered ``0, 1, ...``: a user's candidates depend on its own row alone). ``first_row``:
    ``seen`` holds the rows of users ``first_row, first_row + 1, ...`` (a rank's users)."""
    n_items = seen.shape[1]
    member = Membership(seen, dense_limit=sized_dense_limit(seen.nnz))  # exact either way
    rows = np.asarray(users, dtype=np.int64) - first_row
    out = np.full((len(users), 1 + n_neg), PAD, dtype=np.int64)
    out[:, 0] = items
    available = np.minimum(n_items - np.diff(seen.indptr)[rows], n_neg)
    filled = np.zeros(len(users), dtype=np.int64)
    rem = np.flatnonzero(filled < available)
    width = 2 * n_neg + 16
    per_user = isinstance(rng, UserDraws)
    for t in range(30):
        if not len(rem):
            break
        # the sequential stream: one draw for every remaining user, as always (its values
        # depend on the call's size); the rest goes in blocks of users (bounded temporaries)
        whole = None if per_user else rng.integers(0, n_items, size=(len(rem), width))
        k = t * width + np.arange(width, dtype=np.int64)
        for b in range(0, len(rem), CANDIDATE_BLOCK):
            sel = rem[b: b + CANDIDATE_BLOCK]
            draw = rng.below(users[sel][:, None], k[None, :], n_items) if per_user else whole[b: b + len(sel)]
            ok = ~member.contains(
                torch.from_numpy(np.repeat(rows[sel], width)), torch.from_numpy(draw.ravel())
            ).numpy().reshape(draw.shape)
            combined = np.concatenate([out[sel, 1:], draw], axis=1)
            valid = np.concatenate([out[sel, 1:] != PAD, ok], axis=1)
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
            out[sel, 1:] = vals
            filled[sel] = got
        del whole
        rem = rem[filled[rem] < available[rem]]
    for r in rem:  # users who saw nearly the whole catalogue: enumerate what is left
        u = rows[r]
        row_seen = seen.indices[seen.indptr[u]: seen.indptr[u + 1]]
        have = out[r, 1: 1 + filled[r]]
        pool = np.setdiff1d(np.arange(n_items), np.concatenate([row_seen, have]))
        if isinstance(rng, UserDraws):  # the pool in an order hashed from (user, item)
            order = np.argsort(rng.words(users[r], (1 << 31) + pool), kind="stable")
            take = pool[order][: n_neg - filled[r]]
        else:
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


# -- splits with several held-out items per user (issue 17) ------------------------------------
SPLITS = ("loo", "temporal", "ratio", "ratio-time")


def temporal_masks(data: Interactions, valid_frac: float = 0.1, test_frac: float = 0.1,
                   valid: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Global temporal split of ``data``'s interactions (in ``data.coo()`` order): the latest
    ``test_frac`` of all interactions is test, the ``valid_frac`` before them validation (when
    ``valid``), the rest training. Order: timestamp, then user, then item index (so equal
    timestamps split the same way every time). Returns ``(valid_mask, test_mask)``."""
    if data.timestamps is None:
        raise ConfigError("--split temporal needs timestamps, and this dataset has none (use --split ratio)")
    if not (0 < test_frac < 1 and 0 <= valid_frac < 1 and valid_frac + test_frac < 1):
        raise ConfigError(f"temporal split fractions must be in (0, 1) and sum below 1, got {valid_frac}, {test_frac}")
    users, items = data.coo()
    order = np.lexsort((items, users, data.timestamps))
    n = len(order)
    n_test, n_valid = int(round(n * test_frac)), int(round(n * valid_frac)) if valid else 0
    test = np.zeros(n, dtype=bool)
    val = np.zeros(n, dtype=bool)
    test[order[n - n_test:]] = True
    val[order[n - n_test - n_valid: n - n_test]] = True
    return val, test


def ratio_masks(data: Interactions, rng: np.random.Generator, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                by_time: bool = False, valid: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-user ratio split (e.g. 8:1:1): each user's interactions, in time order (``by_time``;
    equal times in a seeded random order) or a seeded random order, end with ``round(n * test)`` test and
    ``round(n * valid)`` validation items, at least one each when the user has 3 or more
    (2 or more without ``valid``), and always at least one training item. Returns
    ``(valid_mask, test_mask)`` over ``data.coo()`` order."""
    if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0) or ratios[2] <= 0:
        raise ConfigError(f"ratio split needs train:valid:test shares summing to 1 with test > 0, got {ratios}")
    if by_time and data.timestamps is None:
        raise ConfigError("--split ratio-time needs timestamps, and this dataset has none (use --split ratio)")
    users, items = data.coo()
    if by_time:  # grouped by user, in time order, equal times in random order (as leave-one-out)
        order = np.lexsort((rng.random(len(users)), data.timestamps, users))
    else:  # grouped by user, in random order
        order = np.lexsort((items, rng.random(len(users)), users))
    counts = np.bincount(users, minlength=data.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty(len(users), dtype=np.int64)
    pos[order] = np.arange(len(users)) - np.repeat(starts, counts)  # position within the user's order
    n_u = counts[users]
    share_v = ratios[1] if valid else 0.0
    need = 3 if valid and share_v > 0 else 2
    n_test = np.where(counts >= need, np.maximum(1, np.round(counts * ratios[2])), 0).astype(np.int64)
    n_val = np.where(counts >= need, np.maximum(int(share_v > 0), np.round(counts * share_v)), 0).astype(np.int64)
    excess = np.maximum(n_test + n_val - (counts - 1), 0)  # keep one training item: validation gives way first
    from_val = np.minimum(excess, n_val)
    n_val, n_test = n_val - from_val, n_test - (excess - from_val)
    test = pos >= n_u - n_test[users]
    val = (~test) & (pos >= n_u - n_test[users] - n_val[users])
    return val, test


def holdout_rows(data: Interactions, mask: np.ndarray, train: Interactions) -> tuple[np.ndarray, np.ndarray, int]:
    """``(users, items, dropped)``: the masked interactions whose user has a training item
    (the others cannot be scored by a user-id model and are dropped, counted)."""
    users, items = data.coo()
    u, i = users[mask].astype(np.int64), items[mask].astype(np.int64)
    has_train = np.diff(train.matrix.indptr) > 0
    ok = has_train[u]
    return u[ok], i[ok], int((~ok).sum())


def split_multi(data: Interactions, kind: str, rng: np.random.Generator, valid: bool = True,
                ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)):
    """Split ``data`` by ``kind`` (``temporal``, ``ratio``, ``ratio-time``) into training
    interactions and (users, items) rows of validation and test, one row per held-out
    interaction; returns ``(train, (val_u, val_i), (test_u, test_i), report)``.

    The validation rows are carved either way, so that the test rows are the same with and
    without ``valid``; without it they go back into training (and are still returned, for a
    caller that draws their candidates to keep its random stream alike)."""
    if kind == "temporal":
        vmask, tmask = temporal_masks(data, ratios[1], ratios[2])
    elif kind in ("ratio", "ratio-time"):
        vmask, tmask = ratio_masks(data, rng, ratios, by_time=kind == "ratio-time")
    else:
        raise ConfigError(f"unknown split {kind!r} (known: {', '.join(SPLITS)})")
    users, items = data.coo()

    def part(keep: np.ndarray) -> Interactions:
        out = Interactions.from_indices(
            users[keep], items[keep], data.user_map, data.item_map,
            None if data.timestamps is None else data.timestamps[keep],
            None if data.ratings is None else data.ratings[keep], meta=data.meta)
        out.n_duplicates = data.n_duplicates
        return out

    keep = ~(vmask | tmask)
    train = part(keep)
    vu, vi, v_drop = holdout_rows(data, vmask, train)
    tu, ti, t_drop = holdout_rows(data, tmask, train)
    if not valid:
        keep = ~tmask
        train = part(keep)
    report = {"split": kind, "train": int(keep.sum()), "valid_rows": len(vu) if valid else 0, "test_rows": len(tu),
              "valid_users": len(np.unique(vu)) if valid else 0, "test_users": len(np.unique(tu)),
              "dropped_rows_of_users_without_training": {"valid": v_drop if valid else 0, "test": t_drop}}
    return train, (vu, vi), (tu, ti), report
