"""item2vec: item vectors learned from interaction histories by skip-gram with negative
sampling (gensim ``Word2Vec``; Barkan & Koenigstein 2016, Grbovic et al. 2015).

A user's training history is a sentence and items are words. Where the dataset has
timestamps the sentence is ordered by time (ties: item index) and the window shrinks at
random, as in word2vec, so near neighbours in time weigh more. Where it has none (an
unordered basket, e.g. ``ncf-ml-1m``) the basket is reshuffled at every pass over the
corpus (seeded) and the window does not shrink: each item then sees a uniform sample of
its basket-mates, all of them when ``window`` covers the basket.

Scoring (the Scorer contract): a user's profile is the mean of the unit vectors of their
``recent`` latest training items (all items where ``recent`` is 0 or there are no
timestamps), normalised, so ``score(u, i)`` is the cosine between item ``i`` and that
profile, in [-1, 1] (its ranking is that of the mean cosine to those items). Items without
a vector (fewer than ``min_count`` training interactions) score ``NO_VECTOR`` (-2), below
every cosine.

State (frozen parameters, ``requires_grad=False``, as for the fitted baselines: the
safetensors checkpoint, ``.to(device)`` and the device lookup through ``parameters()``
work as for the neural models)::

    vectors     [n_items, vector_size]  float32, zeros for items without a vector
    has_vector  [n_items]               bool
    profiles    [n_users, vector_size]  float32, unit norm (zeros: no usable history)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import Model

NO_VECTOR = -2.0  # score of an item without a vector: below every cosine


class _Sentences:
    """Restartable corpus of users' histories as lists of str tokens (item indexes).

    ``shuffle=True`` permutes each history afresh on every pass (gensim makes one pass to
    build the vocabulary and one per epoch), from a generator seeded by (seed, pass).
    """

    def __init__(self, histories: list[np.ndarray], shuffle: bool, seed: int):
        self.histories = histories
        self.shuffle = shuffle
        self.seed = seed
        self.passes = 0

    def __iter__(self) -> Iterator[list[str]]:
        rng = np.random.default_rng([self.seed, self.passes])
        self.passes += 1
        for h in self.histories:
            if len(h) == 0:
                continue
            yield [str(i) for i in (rng.permutation(h) if self.shuffle else h)]

    def __len__(self) -> int:
        return sum(1 for h in self.histories if len(h))


def histories(matrix: sp.csr_matrix, timestamps: np.ndarray | None) -> list[np.ndarray]:
    """Each user's training items, ordered by (time, item) where there are timestamps."""
    m = matrix.tocsr()
    if timestamps is None:
        return [m.indices[m.indptr[u]: m.indptr[u + 1]].astype(np.int64) for u in range(m.shape[0])]
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, timestamps, rows))  # by row, then time, then item
    items = m.indices[order].astype(np.int64)
    return [items[m.indptr[u]: m.indptr[u + 1]] for u in range(m.shape[0])]


def recent_weights(matrix: sp.csr_matrix, timestamps: np.ndarray | None, recent: int) -> sp.csr_matrix:
    """[n_users, n_items] 0/1 matrix selecting each user's ``recent`` latest items (all of
    them where ``recent`` is 0 or there are no timestamps)."""
    m = matrix.tocsr().astype(np.float32)
    if timestamps is None or recent <= 0:
        m.data[:] = 1.0
        return m
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((-m.indices, -timestamps, rows))  # latest first (ties: larger index)
    pos = np.empty(len(order), np.int64)
    pos[order] = np.arange(len(order)) - m.indptr[rows[order]]
    keep = pos < recent
    return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], m.indices[keep])), shape=m.shape)


class _Progress:
    """gensim callback advancing a rich progress bar once per epoch."""

    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def on_train_begin(self, model):
        pass

    def on_train_end(self, model):
        pass

    def on_epoch_begin(self, model):
        pass

    def on_epoch_end(self, model):
        self.progress.advance(self.task)


class Item2Vec(Model):
    name = "item2vec"
    trainable = False
    params = {
        "vector_size": 64,
        "window": 0,  # 0: the longest history (every history fits in the window)
        "min_count": 1,
        "negative": 5,
        "ns_exponent": 0.75,
        "sample": 1e-3,
        "alpha": 0.025,
        "epochs": 5,
        "recent": 3,  # latest items in the user profile; 0: all (always all without timestamps)
        "workers": 1,  # > 1 is faster but not reproducible
    }
    config_fields = ()
    # a quick fit on a tiny dataset (the registry contract tests): small vectors, more passes
    contract_options: ClassVar[dict] = {"vector_size": 8, "epochs": 30, "sample": 0.0, "recent": 0}

    def __init__(self, n_users: int, n_items: int, vector_size: int = 64, window: int = 0, min_count: int = 1,
                 negative: int = 5, ns_exponent: float = 0.75, sample: float = 1e-3, alpha: float = 0.025,
                 epochs: int = 5, recent: int = 3, workers: int = 1):
        super().__init__(n_users, n_items)
        checks = [
            (vector_size >= 1, f"vector_size must be >= 1, got {vector_size}"),
            (window >= 0, f"window must be >= 0 (0: the whole history), got {window}"),
            (min_count >= 1, f"min_count must be >= 1, got {min_count}"),
            (negative >= 1, f"negative must be >= 1, got {negative}"),
            (-2.0 <= ns_exponent <= 2.0, f"ns_exponent must be in [-2, 2], got {ns_exponent}"),
            (sample >= 0, f"sample must be >= 0, got {sample}"),
            (alpha > 0, f"alpha must be > 0, got {alpha}"),
            (epochs >= 1, f"epochs must be >= 1, got {epochs}"),
            (recent >= 0, f"recent must be >= 0 (0: all items), got {recent}"),
            (workers >= 1, f"workers must be >= 1, got {workers}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"item2vec: {msg}")
        self._hparams = {"vector_size": int(vector_size), "window": int(window), "min_count": int(min_count),
                         "negative": int(negative), "ns_exponent": float(ns_exponent), "sample": float(sample),
                         "alpha": float(alpha), "epochs": int(epochs), "recent": int(recent),
                         "workers": int(workers)}
        self.vectors = nn.Parameter(torch.zeros(n_items, vector_size), requires_grad=False)
        self.has_vector = nn.Parameter(torch.zeros(n_items, dtype=torch.bool), requires_grad=False)
        self.profiles = nn.Parameter(torch.zeros(n_users, vector_size), requires_grad=False)
        self.stats: dict = {}

    # -- fitting -------------------------------------------------------------------------
    def fit(self, dataset, cfg) -> None:
        """Train the vectors on ``dataset.train`` (seeded by ``cfg.seed``), then the profiles."""
        from gensim.models import Word2Vec
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ncf.console import console

        hp = self._hparams
        train = dataset.train
        if (train.n_users, train.n_items) != (self.n_users, self.n_items):
            raise ConfigError(f"item2vec: built for {self.n_users} users / {self.n_items} items, "
                             f"the dataset has {train.n_users} / {train.n_items}")
        ordered = train.timestamps is not None
        hist = histories(train.matrix, train.timestamps)
        longest = max((len(h) for h in hist), default=1)
        window = hp["window"] or max(longest, 1)
        corpus = _Sentences(hist, shuffle=not ordered, seed=cfg.seed)
        if len(corpus) == 0:
            raise ConfigError("item2vec: the training data has no interactions")
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        show = getattr(cfg, "progress", True)
        with Progress(*columns, console=console, transient=True, disable=not show) as prog:
            task = prog.add_task(f"item2vec ({'sequences' if ordered else 'baskets'}, window {window})",
                                 total=hp["epochs"])
            w2v = Word2Vec(
                vector_size=hp["vector_size"], window=window, min_count=hp["min_count"], sg=1, hs=0,
                negative=hp["negative"], ns_exponent=hp["ns_exponent"], sample=hp["sample"], alpha=hp["alpha"],
                seed=cfg.seed, workers=hp["workers"], shrink_windows=ordered, max_vocab_size=None,
            )
            w2v.build_vocab(corpus)
            if not len(w2v.wv):
                raise ConfigError(f"item2vec: no item has min_count={hp['min_count']} training interactions")
            w2v.train(corpus, total_examples=w2v.corpus_count, epochs=hp["epochs"],
                      callbacks=[_Progress(prog, task)])
        vectors = np.zeros((self.n_items, hp["vector_size"]), np.float32)
        idx = np.array([int(k) for k in w2v.wv.index_to_key], dtype=np.int64)
        vectors[idx] = w2v.wv.vectors
        has = np.zeros(self.n_items, bool)
        has[idx] = True
        self.vectors.copy_(torch.from_numpy(vectors))
        self.has_vector.copy_(torch.from_numpy(has))
        self.set_profiles(train.matrix, train.timestamps)
        self.stats = {"items_with_vector": int(has.sum()), "items_without_vector": int((~has).sum()),
                      "window": int(window), "ordered": ordered}
        console.print(f"item2vec: {has.sum()} items with a vector, {(~has).sum()} without "
                      f"(fewer than min_count={hp['min_count']} training interactions); window {window}, "
                      f"{'time-ordered sequences' if ordered else 'shuffled baskets'}")

    def set_profiles(self, matrix: sp.csr_matrix, timestamps: np.ndarray | None, recent: int | None = None) -> None:
        """Recompute the user profiles from a users x items history (``recent`` overrides the
        hyperparameter, and is recorded)."""
        if recent is not None:
            self._hparams["recent"] = int(recent)
        w = recent_weights(matrix, timestamps, self._hparams["recent"])
        unit = self._unit().cpu().numpy()
        prof = np.asarray(w @ unit, dtype=np.float32)
        norm = np.linalg.norm(prof, axis=1, keepdims=True)
        prof = np.divide(prof, norm, out=np.zeros_like(prof), where=norm > 0)
        self.profiles.copy_(torch.from_numpy(prof))

    # -- scoring -------------------------------------------------------------------------
    def _unit(self) -> torch.Tensor:  # [n_items, d], zero rows for items without a vector
        return torch.nn.functional.normalize(self.vectors, dim=1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # [B]
        s = (self.profiles[users] * self._unit()[items]).sum(-1)
        return torch.where(self.has_vector[items], s, torch.full_like(s, NO_VECTOR))

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:  # [B, n_items]
        s = self.profiles[users] @ self._unit().T
        return torch.where(self.has_vector[None, :], s, torch.full_like(s, NO_VECTOR))

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:  # [B, n_items]
        """The profile of each history (its ``recent`` latest items; all where ``recent`` is 0),
        scored like a training user's."""
        unit = self._unit()
        recent = self._hparams["recent"]
        prof = torch.zeros(len(histories), unit.shape[1], device=unit.device)
        for row, h in enumerate(histories):
            h = torch.as_tensor(h, dtype=torch.int64, device=unit.device)
            h = h[-recent:] if recent > 0 else h
            prof[row] = unit[torch.unique(h)].sum(0)
        prof = torch.nn.functional.normalize(prof, dim=1)
        s = prof @ unit.T
        return torch.where(self.has_vector[None, :], s, torch.full_like(s, NO_VECTOR))

    def item_embeddings(self) -> torch.Tensor:
        """The learned vectors [n_items, d]; rows of items without a vector are zeros."""
        return self.vectors.detach()
