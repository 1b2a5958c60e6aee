"""The one recommend path: top-k, seen filter, candidate subsets, re-ranking and the popularity
fallback, with raw ids in and out (no HTTP here).

Every client goes through :class:`Recommender`: the Python API (``ncf.fit(...).recommend``),
``ncf recommend``, ``ncf rerank`` and the HTTP service (which scores from user vectors kept in
a feature store, then hands the scores to :meth:`Recommender.slate`). :func:`top_k` is the only
top-k in the library: best first, ties broken by the lower item index, everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ncf.checkpoint import CheckpointError, load_item_info, load_model, load_run_maps, load_train_matrix, read_json
from ncf.data.interactions import IdMap
from ncf.errors import ConfigError, DataError, UnknownIdError
from ncf.models.base import Model


class UnknownItemError(UnknownIdError):
    """A raw item id that is not in the model's catalogue."""


class RerankUnavailable(ConfigError):
    """Re-ranking was asked for, but the run has no (valid) ``rerank.json``."""


def load_cold_prior(directory: Path) -> dict | None:
    """``cold_prior.json`` of a run directory (the segment prior's ``mode`` / ``alpha`` chosen on
    validation users, e.g. by ``benchmarks/coldstart.py``), or None."""
    from ncf.coldstart import SegmentPrior

    path = Path(directory) / "cold_prior.json"
    if not path.exists():
        return None
    got = read_json(path)
    if not isinstance(got, dict) or set(got) - {"mode", "alpha"}:
        raise CheckpointError(f"{path}: expected {{\"mode\": ..., \"alpha\": ...}}, got {got!r}")
    if isinstance(got.get("alpha"), str):
        try:
            got["alpha"] = float(got["alpha"])
        except ValueError:
            raise CheckpointError(f"{path}: alpha must be a number or \"inf\", got {got['alpha']!r}") from None
    alpha = got.get("alpha", 1.0)
    if not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise CheckpointError(f"{path}: alpha must be >= 0 (or \"inf\"), got {alpha!r}")
    if got.get("mode", SegmentPrior.MODES[0]) not in SegmentPrior.MODES:
        raise CheckpointError(f"{path}: mode must be one of {', '.join(SegmentPrior.MODES)}, got {got['mode']!r}")
    return got


def top_k(scores: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """Indexes of the ``k`` largest finite ``scores`` ([n]), best first, ties by lower index;
    ``exclude`` is a boolean mask [n] (or None). Fewer than ``k`` when fewer are finite."""
    scores = np.asarray(scores)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    out = ~np.isfinite(scores)  # NaN and +-inf are never recommended (nor a cut-off to compare with)
    if exclude is not None:
        out |= exclude
    if out.any():
        scores = np.where(out, -np.inf, scores)
    k = min(int(k), int(len(scores) - out.sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        top = np.flatnonzero(scores >= scores[part].min())  # every item tied at the cut-off too
    else:
        top = np.arange(len(scores))
    top = top[np.isfinite(scores[top])]
    return top[np.lexsort((top, -scores[top]))][:k]


TIED_CHUNK = 1 << 24  # entries of the rows top_k_rows redoes at once (ties at the cut-off)
SCORE_BLOCK_BYTES = 1 << 28  # float32 scores of one block of users: 256 MiB (1,637 users x 40,981 items)


def block_users(n_items: int, budget: int = SCORE_BLOCK_BYTES) -> int:
    """Users scored per block so that their [users, n_items] float32 scores take about ``budget``
    bytes (between 16 and 8,192 users): large blocks keep the matrix product and the top-k at
    full speed, the budget keeps memory moderate whatever the catalogue size."""
    return int(min(8192, max(16, budget // (4 * max(1, int(n_items))))))


def top_k_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k` of every row of ``scores`` [B, n] at once: (values, indexes), each [B, k]
    (k capped at n), best first, ties by lower index; a row with fewer than ``k`` finite scores
    is padded with its -inf entries, lowest index first. ``torch.topk`` does the work (one
    extra place tells whether ties straddle the cut-off, where topk's choice is unspecified);
    such rows are redone in linear time: every item above the k-th score, then the items tied
    with it in index order until k are taken."""
    n = scores.shape[1]
    k = min(int(k), n)
    if k == 0 or n == 0:
        return torch.topk(scores, k, dim=1)
    val, idx = torch.topk(scores, min(k + 1, n), dim=1)
    if k < n:
        tied = val[:, k - 1] == val[:, k]
        val, idx = val[:, :k], idx[:, :k]
        rows = torch.nonzero(tied).flatten()
        step = max(1, TIED_CHUNK // n)  # the redo holds a few [rows, n] temporaries
        for s in range(0, len(rows), step):
            r = rows[s: s + step]
            val[r], idx[r] = _tied_rows(scores[r], val[r, k - 1:k], k)
    order = torch.argsort(idx, dim=1)  # inside the slate: by index, then stably by value
    val, idx = val.gather(1, order), idx.gather(1, order)
    order = torch.argsort(val, dim=1, descending=True, stable=True)
    return val.gather(1, order), idx.gather(1, order)


def top_k_finite_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k_rows` of the finite scores only, as :func:`top_k` chooses: NaN and +inf are
    never taken (a row short of finite scores is padded with -inf entries). ``torch.topk`` ranks
    NaN and +inf first, so only rows whose top k holds one are redone (in place, without them)."""
    val, idx = top_k_rows(scores, k)
    bad = (torch.isnan(val) | torch.isposinf(val)).any(dim=1)
    if bad.any():
        rows = scores[bad].nan_to_num_(nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf)
        val[bad], idx[bad] = top_k_rows(rows, k)
    return val, idx


def _tied_rows(scores: torch.Tensor, cut: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` of rows ``scores`` [R, n] whose k-th best score ``cut`` [R, 1] is tied beyond
    the k-th place: the items above the cut (NaN ranks above all, as in ``torch.topk``), then the
    lowest-indexed items at the cut; (values, indexes) [R, k] in index order."""
    above = (scores > cut) | torch.isnan(scores)
    at = scores == cut
    room = k - above.sum(dim=1, keepdim=True)
    take = above | (at & (torch.cumsum(at, dim=1) <= room))
    idx = take.nonzero()[:, 1].view(-1, k)  # row-major: each row's k taken items, by index
    return scores.gather(1, idx), idx


def csr_row_entries(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every stored entry of the CSR ``matrix``'s ``rows`` ([R] row indexes, any order, repeats
    allowed) as (position in ``rows``, column) arrays [nnz of those rows], without a Python loop:
    what a block of scores [R, n_cols] scatters -inf to, to leave out seen items."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = matrix.indptr[rows].astype(np.int64)
    lens = matrix.indptr[rows + 1].astype(np.int64) - starts
    pos = np.repeat(np.arange(len(rows)), lens)
    first = np.repeat(starts - (np.cumsum(lens) - lens), lens)  # entry n of the run: first + n
    return pos, matrix.indices[first + np.arange(len(pos))].astype(np.int64)


def writable_scores(scores: torch.Tensor) -> torch.Tensor:
    """A block of scores that -inf may be written into: float32 or float64, and never a view of
    a model's own tensors (a ``score_all`` may return one)."""
    if not scores.dtype.is_floating_point or scores.dtype in (torch.float16, torch.bfloat16):
        return scores.float()
    return scores.clone() if scores._is_view() else scores


def exclude_(scores: torch.Tensor, pos: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """Set ``scores[pos, cols]`` to -inf in place (entries of :func:`csr_row_entries`)."""
    if len(pos):
        dev = scores.device
        scores[torch.from_numpy(pos).to(dev), torch.from_numpy(cols).to(dev)] = -torch.inf
    return scores


@dataclass
class Recommendation:
    user: object
    items: list[dict]  # {"item": raw id, "score": float, "title": str | None[, "utility": float]}
    fallback: bool  # the user is unknown to the model: most popular items
    reranked: bool = False

    def to_dict(self) -> dict:
        return {"user": self.user, "items": self.items, "fallback": self.fallback, "reranked": self.reranked}


@dataclass
class RecommendationTable:
    """Recommendations of many users as flat arrays: user ``u`` (in request order) holds entries
    ``offsets[u]:offsets[u + 1]`` of ``items`` / ``scores`` (and ``utility``), best first."""

    users: list  # [U] raw user ids: the model's spelling for known users, as given for unknown ones
    fallback: np.ndarray  # [U] bool: the user is unknown to the model (most popular items)
    counts: np.ndarray  # [U] int64: slate length (k, or fewer where fewer items are left)
    items: np.ndarray  # [N] int64 item indexes
    scores: np.ndarray  # [N] float64
    utility: np.ndarray | None = None  # [N] float64 when re-ranked
    reranked: bool = False

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def ranks(self) -> np.ndarray:
        """[N] 1-based rank of every entry in its user's slate."""
        return np.arange(len(self.items)) - np.repeat(self.offsets[:-1], self.counts) + 1

    def columns(self, rec: Recommender, lists: bool = True) -> dict[str, list | np.ndarray]:
        """Columns ``user, rank, item, score, title, utility, fallback`` (raw ids; ``title`` None
        without titles, ``utility`` None unless re-ranked), one row per (user, rank): Python lists,
        or with ``lists=False`` NumPy arrays wherever the values are numbers (a DataFrame is built
        from those without a pass over Python objects)."""
        def out(values: np.ndarray):
            return values.tolist() if lists or values.dtype == object else values

        titles = rec.title_array()
        n = len(self.items)
        if all(type(u) is int for u in self.users):
            users = np.asarray(self.users, dtype=np.int64)
        else:
            users = np.empty(len(self.users), dtype=object)
            users[:] = self.users
        return {"user": out(np.repeat(users, self.counts)), "rank": out(self.ranks),
                "item": out(rec.raw_item_array()[self.items]), "score": out(self.scores),
                "title": [None] * n if titles is None else titles[self.items].tolist(),
                "utility": [None] * n if self.utility is None else out(self.utility),
                "fallback": out(np.repeat(self.fallback, self.counts))}

    def recommendations(self, rec: Recommender) -> list[Recommendation]:
        """One :class:`Recommendation` per user (item dicts with raw ids and titles)."""
        cols = self.columns(rec)
        out = []
        for u, (a, b) in enumerate(zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist(), strict=True)):
            items = [{"item": cols["item"][j], "score": cols["score"][j], "title": cols["title"][j]}
                     for j in range(a, b)]
            fb = bool(self.fallback[u])
            if self.utility is not None and not fb:
                for it, j in zip(items, range(a, b), strict=True):
                    it["utility"] = cols["utility"][j]
            out.append(Recommendation(self.users[u], items, fb, self.reranked and not fb))
        return out


class _Slates:
    """Every requested user's slate in padded arrays [U, k] (a slate may be shorter than k; -inf
    or a count marks its end), filled a block at a time, flattened in request order at the end."""

    def __init__(self, n_users: int, k: int, rerank: bool):
        self.items = np.zeros((n_users, k), dtype=np.int64)
        self.scores = np.full((n_users, k), -np.inf)
        self.counts = np.zeros(n_users, dtype=np.int64)
        self.utility = np.full((n_users, k), np.nan) if rerank else None
        self.rerank = rerank

    def put_block(self, rows: np.ndarray, idx: np.ndarray, val: np.ndarray) -> None:
        """Rows ``rows`` [B] get ``top_k_rows``' output [B, k] (-inf entries are no items)."""
        self.items[rows], self.scores[rows] = idx, val
        self.counts[rows] = np.isfinite(val).sum(axis=1)

    def put_same(self, rows: np.ndarray, idx: np.ndarray, val: np.ndarray) -> None:
        self.items[rows, :len(idx)], self.scores[rows, :len(idx)], self.counts[rows] = idx, val, len(idx)

    def put_one(self, row: int, idx: np.ndarray, val: np.ndarray, utility: np.ndarray | None = None) -> None:
        self.put_same(np.array([row]), idx, val)
        if utility is not None:
            self.utility[row, :len(idx)] = utility

    def finish(self, users: list, fallback: np.ndarray) -> RecommendationTable:
        keep = np.arange(self.items.shape[1]) < self.counts[:, None]
        return RecommendationTable(users, fallback, self.counts, self.items[keep], self.scores[keep],
                                   None if self.utility is None else self.utility[keep], self.rerank)


class Recommender:
    """A model with its id maps, its training interactions (the seen filter), popularity counts
    (the fallback), item titles and optionally a re-ranker (anything with ``rerank(item_indexes,
    scores, k)``, e.g. :class:`ncf.rerank.lagrangian.PerRequestReranker`; layers above attach it,
    see :func:`ncf.rerank.lagrangian.load_reranker`)."""

    def __init__(self, model: Model, user_map: IdMap, item_map: IdMap, seen: sp.csr_matrix,
                 item_info: dict | None = None, reranker=None, rerank_reason: str | None = None,
                 cold_prior: dict | None = None):
        if seen.shape != (model.n_users, model.n_items):
            raise ConfigError(f"seen matrix {seen.shape} does not match the model ({model.n_users}, {model.n_items})")
        if (len(user_map), len(item_map)) != (model.n_users, model.n_items):
            raise CheckpointError(f"id maps hold {len(user_map)} users / {len(item_map)} items, the model "
                                  f"{model.n_users} / {model.n_items}: idmap.json does not belong to these weights")
        self.model = model
        self.user_map = user_map
        self.item_map = item_map
        self.seen = seen.tocsr()
        self.popularity = np.bincount(self.seen.indices, minlength=model.n_items).astype(np.float64)
        self.item_info = item_info
        self.reranker = reranker
        self.rerank_reason = rerank_reason or ("" if reranker is not None else "no re-ranker given")
        self.cold_settings = dict(cold_prior or {})  # SegmentPrior's mode / alpha (else its defaults)
        self._cold_prior = None

    @classmethod
    def from_run(cls, directory: str | Path, device: str = "cpu") -> Recommender:
        directory = Path(directory)
        model = load_model(directory, device=device)
        users, items = load_run_maps(directory)
        return cls(model, users, items, load_train_matrix(directory), load_item_info(directory),
                   cold_prior=load_cold_prior(directory))

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters(), torch.empty(0)).device

    def title(self, index: int) -> str | None:
        if self.item_info and self.item_info.get("titles"):
            return self.item_info["titles"][index]
        return None

    def raw_item_array(self) -> np.ndarray:
        """[n_items] raw item ids (int64 for an integer map, else objects), built once."""
        if getattr(self, "_raw_items", None) is None:
            raw = self.item_map.raw_ids
            self._raw_items = np.asarray(raw, dtype=np.int64 if self.item_map.integer else object)
            if self._raw_items.dtype == object:
                self._raw_items[:] = raw  # a list of equal-length tuples would be split otherwise
        return self._raw_items

    def title_array(self) -> np.ndarray | None:
        """[n_items] item titles as objects, or None without titles."""
        if not (self.item_info and self.item_info.get("titles")):
            return None
        if getattr(self, "_titles", None) is None:
            self._titles = np.empty(self.n_items, dtype=object)
            self._titles[:] = self.item_info["titles"]
        return self._titles

    # -- the pieces every client shares ------------------------------------------------

    def items_mask(self, raw_items: Iterable | None) -> np.ndarray:
        """Boolean [n_items] mask of the raw item ids; ids unknown to the model are ignored
        (an interaction recorded online with an item the model never saw)."""
        mask = np.zeros(self.n_items, dtype=bool)
        for raw in raw_items or ():
            idx = self.item_map.get(raw)
            if idx is not None:
                mask[idx] = True
        return mask

    def candidates_mask(self, raw_items: Iterable) -> np.ndarray:
        """Boolean [n_items] mask of an ``items=`` candidate subset; unknown ids are an error."""
        raw_items = list(raw_items)
        idx = [self.item_map.get(r) for r in raw_items]
        unknown = [r for r, i in zip(raw_items, idx, strict=True) if i is None]
        if unknown:
            raise UnknownItemError(f"unknown item(s) in items=: {', '.join(map(repr, unknown[:10]))}"
                                   + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
        mask = np.zeros(self.n_items, dtype=bool)
        mask[np.asarray(idx, dtype=np.int64)] = True
        return mask

    def seen_items(self, user_index: int) -> np.ndarray:
        return self.seen.indices[self.seen.indptr[user_index]: self.seen.indptr[user_index + 1]]

    def item_dicts(self, idx: np.ndarray, scores: np.ndarray) -> list[dict]:
        return [{"item": self.item_map.raw(int(i)), "score": float(s), "title": self.title(int(i))}
                for i, s in zip(idx, scores, strict=True)]

    def popular(self, k: int, exclude: np.ndarray | None = None) -> list[dict]:
        """The fallback: the ``k`` items with most training interactions (``score`` = count)."""
        idx = top_k(self.popularity, exclude, k)
        return self.item_dicts(idx, self.popularity[idx])

    def slate(self, scores: np.ndarray, exclude: np.ndarray | None, k: int, rerank: bool = False,
              candidates: np.ndarray | None = None) -> list[dict]:
        """The ``k`` best items of one user: ``scores`` [n_items] (or aligned with ``candidates``,
        item indexes), ``exclude`` [n_items] left out; ``rerank`` applies the run's multipliers
        (each item then carries its ``utility``, the order it was chosen by)."""
        idx, val, utility = self.slate_indexes(scores, exclude, k, rerank, candidates)
        items = self.item_dicts(idx, val)
        if utility is not None:
            for it, u in zip(items, utility.tolist(), strict=True):
                it["utility"] = u
        return items

    def slate_indexes(self, scores: np.ndarray, exclude: np.ndarray | None, k: int, rerank: bool = False,
                      candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`slate` as arrays: (item indexes [m], scores [m], utility [m] or None), m <= k."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        scores = np.asarray(scores, dtype=np.float64)
        if candidates is None:
            candidates = np.arange(self.n_items)
        else:  # ascending, so that ties fall to the lower item index here too
            order = np.argsort(candidates, kind="stable")
            candidates, scores = np.asarray(candidates)[order], scores[order]
        if exclude is not None:
            keep = ~exclude[candidates]
            candidates, scores = candidates[keep], scores[keep]
        if not rerank:
            pos = top_k(scores, None, k)
            return candidates[pos], scores[pos], None
        if self.reranker is None:
            raise RerankUnavailable(f"re-ranking not available: {self.rerank_reason}")
        finite = np.isfinite(scores)
        r = self.reranker.rerank(candidates[finite], scores[finite], k)
        by_item = dict(zip(candidates[finite].tolist(), scores[finite].tolist(), strict=True))
        idx = np.asarray(r.items, dtype=np.int64)
        return idx, np.array([by_item[i] for i in idx.tolist()], dtype=np.float64), np.asarray(r.utility, np.float64)

    @torch.no_grad()
    def scores(self, user_indexes: Sequence[int]) -> np.ndarray:
        """[B, n_items] model scores (float64) of known users."""
        users = torch.as_tensor(np.asarray(user_indexes, dtype=np.int64), device=self.device)
        return self.model.score_all(users).double().cpu().numpy()

    # -- recommendations ------------------------------------------------------------------

    def recommend_many(self, users: Sequence, k: int = 10, filter_seen: bool = True,
                       extra_seen: Sequence[Iterable] | None = None, items: Iterable | None = None,
                       rerank: bool = False, batch_size: int | None = None) -> list[Recommendation]:
        """Top ``k`` for each raw user id, scored ``batch_size`` users at a time (None:
        :func:`block_users` of the catalogue). ``extra_seen``:
        per user, raw item ids to leave out too; ``items``: only these raw item ids are candidates.
        Users unknown to the model get the most popular items, marked ``fallback``
        (:meth:`recommend_table`, as :class:`Recommendation` objects)."""
        return self.recommend_table(users, k, filter_seen, extra_seen, items, rerank, batch_size).recommendations(self)

    def recommend_table(self, users: Sequence, k: int = 10, filter_seen: bool = True,
                        extra_seen: Sequence[Iterable] | None = None, items: Iterable | None = None,
                        rerank: bool = False, batch_size: int | None = None, progress=None) -> RecommendationTable:
        """:meth:`recommend_many` as flat arrays. Known users are scored ``batch_size`` at a time:
        one ``score_all`` per block, the left-out items set to -inf in the block at once, one
        :func:`top_k_rows` (re-ranking alone goes user by user). ``progress(n)`` (optional) is
        told of every ``n`` users done."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        batch_size = block_users(self.n_items) if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        users = list(users)
        if extra_seen is not None and len(extra_seen) != len(users):
            raise ConfigError(f"extra_seen has {len(extra_seen)} entries for {len(users)} users")
        outside = None if items is None else np.flatnonzero(~self.candidates_mask(items))
        index = np.array([-1 if i is None else i for i in map(self.user_map.get, users)], dtype=np.int64)
        table = _Slates(len(users), min(k, self.n_items), rerank)
        known = np.flatnonzero(index >= 0)
        for start in range(0, len(known), batch_size):
            part = known[start:start + batch_size]
            extra = None if extra_seen is None else [extra_seen[n] for n in part]
            scores = self._block_scores(index[part], extra, outside, filter_seen)
            if rerank:
                scores = scores.double().cpu().numpy()
                for n, row in zip(part.tolist(), scores, strict=True):
                    table.put_one(n, *self.slate_indexes(row, None, k, True))
            else:
                val, idx = top_k_finite_rows(scores, k)
                table.put_block(part, idx.cpu().numpy(), val.double().cpu().numpy())
            if progress is not None:
                progress(len(part))
        unknown = np.flatnonzero(index < 0)
        plain = unknown if extra_seen is None else np.array(
            [n for n in unknown.tolist() if extra_seen[n] is None or (isinstance(extra_seen[n], Sized)
                                                                      and not len(extra_seen[n]))], dtype=np.int64)
        if len(plain):  # the same most popular items for every one of them
            idx, val = self._popular_slate(outside, None, k)
            table.put_same(plain, idx, val)
        for n in np.setdiff1d(unknown, plain).tolist():
            table.put_one(n, *self._popular_slate(outside, extra_seen[n], k))
        if progress is not None and len(unknown):
            progress(len(unknown))
        raws = self.user_map.raw_ids
        return table.finish([raws[i] if i >= 0 else u for u, i in zip(users, index.tolist(), strict=True)], index < 0)

    def _popular_slate(self, outside: np.ndarray | None, extra, k: int) -> tuple[np.ndarray, np.ndarray]:
        exclude = self.items_mask(extra)
        if outside is not None:
            exclude[outside] = True
        idx = top_k(self.popularity, exclude, k)
        return idx, self.popularity[idx]

    def _extra_entries(self, extra: list | None) -> tuple[np.ndarray, np.ndarray]:
        """(position in the block, item index) of the block's ``extra_seen`` raw ids known to the model."""
        if not extra:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pos, cols = [], []
        for p, raws in enumerate(extra):
            got = [i for i in map(self.item_map.get, raws or ()) if i is not None]
            pos += [p] * len(got)
            cols += got
        return np.asarray(pos, dtype=np.int64), np.asarray(cols, dtype=np.int64)

    @torch.no_grad()
    def _block_scores(self, user_index: np.ndarray, extra, outside, filter_seen: bool) -> torch.Tensor:
        """[B, n_items] scores of a block of known users, every left-out item at -inf."""
        scores = writable_scores(self.model.score_all(torch.as_tensor(user_index, device=self.device)))
        if outside is not None and len(outside):
            scores.index_fill_(1, torch.as_tensor(outside, device=scores.device), -torch.inf)
        if filter_seen:
            exclude_(scores, *csr_row_entries(self.seen, user_index))
        return exclude_(scores, *self._extra_entries(extra))

    def recommend(self, user, k: int = 10, filter_seen: bool = True, extra_seen: Iterable | None = None,
                  items: Iterable | None = None, rerank: bool = False) -> Recommendation:
        """Top ``k`` items for raw user id ``user`` (see :meth:`recommend_many`)."""
        return self.recommend_many([user], k, filter_seen, [list(extra_seen or ())], items, rerank)[0]

    def cold_prior(self):
        """The cold-start scorer of this run (:class:`ncf.coldstart.SegmentPrior`: popularity
        conditioned on the user fields, shrunk towards plain popularity), built once from the
        training interactions and the training users' feature values the model holds (widedeep)."""
        from ncf.coldstart import SegmentPrior

        if self._cold_prior is None:
            fields = getattr(self.model, "user_fields", None)
            if not fields:
                raise ConfigError(f"model {self.model.name!r} does not use user features: --features needs a "
                                  "widedeep run with user features (ncf train --model widedeep)")
            with torch.no_grad():
                codes = [c.cpu().numpy() for c in self.model.user_features(torch.arange(self.model.n_users,
                                                                                        device=self.device))]
            names = [f.name for f in fields]
            keep = [n for n, c in enumerate(codes) if c.ndim == 1]
            self._cold_prior = SegmentPrior(self.seen, [codes[n] for n in keep], field_names=[names[n] for n in keep],
                                            **self.cold_settings)
        return self._cold_prior

    def recommend_features(self, features: dict[str, str], k: int = 10) -> Recommendation:
        """Top ``k`` items for a new user known only by side features (``{"age": "25", ...}``):
        the run's cold-start scorer (:meth:`cold_prior`; ``score`` is its log-probability of the
        item). Unknown feature names or values raise ``ValueError`` listing the valid ones."""
        from ncf.data.features import encode_features

        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        prior = self.cold_prior()
        codes = [c for c in encode_features(self.model.user_fields, features) if c.ndim == 1]
        scores = prior.score_codes(codes)[0]
        return Recommendation(dict(features), self.slate(scores, None, k), False)

    def similar(self, item, k: int = 10) -> list[dict]:
        """Nearest items to raw item id ``item`` by cosine of the model's item embeddings."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        i = self.item_map.get(item)
        if i is None:
            raise UnknownItemError(f"unknown item {item!r}: not in the model's training data")
        emb = self.model.item_embeddings()
        if emb is None:
            raise ConfigError(f"model {self.model.name!r} has no item embeddings to compare")
        norms = emb.float().norm(dim=1).cpu().numpy()
        if not norms[i] > 0 or not np.isfinite(norms[i]):  # e.g. item2vec items below min_count
            why = f"fewer than min_count={self.model.hparams()['min_count']} training interactions" \
                if "min_count" in self.model.hparams() else "its embedding is zero"
            raise ConfigError(f"item {item!r} has no vector in this {self.model.name} run ({why})")
        emb = torch.nn.functional.normalize(emb.float(), dim=1)
        sims = (emb @ emb[i]).double().cpu().numpy()
        exclude = ~np.isfinite(sims) | ~(norms > 0)
        exclude[i] = True
        return self.slate(sims, exclude, k)


TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def read_user_file(path: str | Path) -> list[str]:
    """Raw user ids from ``path``: one a line, or a CSV whose header names a ``user`` column (a
    first line that is exactly ``user`` is such a header). Ids stay text here (the one id rule
    reads them against a run's map); an empty id is refused with its line."""
    import pandas as pd

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file of user ids") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the user ids ({e})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: no user ids in the file")
    first = 1
    if "," in lines[0] or lines[0].strip() == "user":  # a CSV with a header
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        names = [str(c).strip() for c in frame.columns]
        if "user" not in names:
            raise DataError(f"{path}: a CSV of users needs a column 'user' in its header (found: {', '.join(names)})")
        lines, first = frame.iloc[:, names.index("user")].tolist(), 2
    for n, u in enumerate(lines):
        if not u.strip():
            raise DataError(f"{path}:{n + first}: empty user id")
    return lines


def check_table_path(path: str | Path, overwrite: bool) -> Path:
    """Refuse, before any work, a table path with an unknown extension, or one that ncf's rule for
    output files refuses (:func:`ncf.outputs.prepare_output_file`: an existing file without
    ``overwrite``, a path inside a run directory)."""
    from ncf.outputs import prepare_output_file

    path = Path(path)
    if not path.name.lower().endswith(TABLE_SUFFIXES):
        raise ConfigError(f"--out {path}: the table's extension says its format: {', '.join(TABLE_SUFFIXES)}")
    return prepare_output_file(path, overwrite)


def write_table(columns: dict[str, list | np.ndarray], path: str | Path, overwrite: bool = False) -> Path:
    """Write columns as CSV or Parquet (by ``path``'s extension), atomically (a temporary file
    renamed into place: a partial file never takes the name). Parquet needs pyarrow; a column of
    mixed raw id types (integer ids and unknown text ids) is written as text there."""
    import pandas as pd

    from ncf.outputs import atomic_write

    path = check_table_path(path, overwrite)
    frame = pd.DataFrame(columns)
    if path.name.lower().endswith((".parquet", ".pq")):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(f"--out {path}: writing Parquet needs pyarrow (pip install 'ncf[parquet]')") from None
        for c in frame.columns:
            if frame[c].dtype == object and frame[c].map(type).nunique() > 1:
                frame[c] = frame[c].astype(str)
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    gz = "gzip" if path.name.lower().endswith(".gz") else None
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, compression=gz))
