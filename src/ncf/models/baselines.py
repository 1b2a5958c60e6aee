"""Strong simple baselines behind the Scorer contract: most-popular, item-KNN, EASE, BPR-MF.

``pop``, ``itemknn`` and ``ease`` are fitted, not trained by SGD (``trainable = False``):
``fit(dataset, cfg)`` computes their state from ``dataset.train`` and stores it in frozen
parameters (``requires_grad=False``), so that the safetensors checkpoint, ``.to(device)``
and the device lookup through ``parameters()`` work as for the neural models.
``itemknn`` and ``ease`` score a user from the items the user saw in training
(``X_u``), so they keep the training matrix (CSR ``indptr``/``indices``) too; its size
depends on the data, and loading a checkpoint resizes it.

``bpr`` is matrix factorisation (dot product + item bias) trained by the Trainer with the
pairwise loss; ``ncf train --model bpr`` uses ``--loss bpr`` unless told otherwise.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ncf.errors import ConfigError
from ncf.models.base import Model, check_memory, pairs_from_rows


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def binary_matrix(matrix: sp.spmatrix) -> sp.csr_matrix:
    """users x items CSR of float32 ones (duplicates and ratings collapsed)."""
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.data[:] = 1.0
    m.eliminate_zeros()
    return m


class FittedModel(Model):
    """A model fitted from the training matrix; its state lives in frozen parameters.

    ``resizable`` names the parameters whose shape depends on the data (not on the
    hyperparameters): loading a state dict adopts the stored shape for those.
    """

    trainable = False
    resizable: ClassVar[tuple[str, ...]] = ()

    def fit(self, dataset, cfg=None) -> FittedModel:  # pragma: no cover - abstract
        raise NotImplementedError

    def _put(self, name: str, value) -> None:
        """Replace a state tensor (keeping the model's device)."""
        old = getattr(self, name)
        t = torch.as_tensor(np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value)
        setattr(self, name, _frozen(t.to(device=old.device, dtype=old.dtype)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in self.resizable:
            t = state_dict.get(prefix + name)
            old = getattr(self, name)
            if t is not None and t.dim() == old.dim() and t.shape != old.shape:
                # the loaded tensor itself where it already has the right type and place (no
                # second copy of a large matrix, e.g. EASE's items x items weights), else a new one
                same = t.dtype == old.dtype and t.device == old.device
                setattr(self, name, _frozen(t.detach() if same else torch.empty(t.shape, dtype=old.dtype,
                                                                                   device=old.device)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        problem = self._check_state()
        if problem:  # raised, not appended to error_msgs, so that it is the message's first line
            raise RuntimeError(f"{self.name}: {problem}")

    def _check_state(self) -> str | None:
        return None


def history_matrix(histories: list[torch.Tensor], n_items: int, device=None) -> torch.Tensor:
    """Dense ``[B, n_items]`` 0/1 rows of item-index histories (repeats count once)."""
    x = torch.zeros(len(histories), n_items, device=device)
    for row, h in enumerate(histories):
        h = torch.as_tensor(h, dtype=torch.int64, device=device)
        if len(h) and (int(h.min()) < 0 or int(h.max()) >= n_items):
            raise ConfigError(f"history names items outside 0..{n_items - 1}")
        x[row, h] = 1.0
    return x


class HistoryModel(FittedModel):
    """A fitted model that scores a user from the rows of the training matrix ``X_u``."""

    resizable = ("hist_indices",)

    def __init__(self, n_users: int, n_items: int):
        super().__init__(n_users, n_items)
        self.hist_indptr = _frozen(torch.zeros(n_users + 1, dtype=torch.int64))
        self.hist_indices = _frozen(torch.zeros(0, dtype=torch.int64))

    def set_history(self, matrix: sp.csr_matrix) -> None:
        if matrix.shape != (self.n_users, self.n_items):
            raise ConfigError(f"training matrix {matrix.shape} does not match the model ({self.n_users}, "
                             f"{self.n_items})")
        m = binary_matrix(matrix)
        m.sort_indices()
        self._put("hist_indptr", m.indptr.astype(np.int64))
        self._put("hist_indices", m.indices.astype(np.int64))

    def _check_state(self) -> str | None:
        ptr, idx = self.hist_indptr, self.hist_indices
        if int(ptr[-1]) != len(idx) or bool((ptr[1:] < ptr[:-1]).any()):
            return f"training history is inconsistent (indptr ends at {int(ptr[-1])}, {len(idx)} indices)"
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self.n_items):
            return f"training history names items outside 0..{self.n_items - 1}"
        return None

    def history_rows(self, users: torch.Tensor) -> torch.Tensor:
        """Sparse (COO) ``[B, n_items]`` 0/1 rows of the training matrix for ``users``."""
        users = users.to(self.hist_indptr.device).long()
        starts, ends = self.hist_indptr[users], self.hist_indptr[users + 1]
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        cols = self.hist_indices[torch.repeat_interleave(starts, counts) + offsets]
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(len(cols), device=users.device),
                                       (len(users), self.n_items), check_invariants=False)

    def history_csr(self, users: torch.Tensor) -> sp.csr_matrix:
        """scipy CSR ``[B, n_items]`` 0/1 rows of the training matrix for ``users``."""
        users = torch.as_tensor(users).long().cpu().numpy()
        ptr, idx = self.hist_indptr.cpu().numpy(), self.hist_indices.cpu().numpy()
        starts, counts = ptr[users], ptr[users + 1] - ptr[users]
        pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        return sp.csr_matrix((np.ones(len(pos), np.float32), idx[pos], np.concatenate([[0], np.cumsum(counts)])),
                             shape=(len(users), self.n_items))

    def item_matrix(self) -> torch.Tensor:
        """Dense ``[I, I]`` item-item weights: ``score(u, ·) = X_u @ item_matrix()``."""
        raise NotImplementedError

    @torch.no_grad()
    def score_all(self, users):
        return torch.sparse.mm(self.history_rows(users), self.item_matrix())

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        """``X_h @ item_matrix()`` with ``X_h`` the 0/1 rows of the histories (no fold-in needed)."""
        return history_matrix(histories, self.n_items, self.hist_indptr.device) @ self.item_matrix()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs through ``score_all`` of the distinct users."""
        return pairs_from_rows(self, users, items)


class Popularity(FittedModel):
    """Most popular: an item's score is its number of training interactions, for every user."""

    name = "pop"
    params: ClassVar[dict] = {}

    def __init__(self, n_users: int, n_items: int):
        super().__init__(n_users, n_items)
        self._hparams = {}
        self.counts = _frozen(torch.zeros(n_items))

    def fit(self, dataset, cfg=None) -> Popularity:
        m = binary_matrix(dataset.train.matrix)
        self._put("counts", np.bincount(m.indices, minlength=self.n_items).astype(np.float32))
        return self

    @classmethod
    def from_matrix(cls, train: sp.csr_matrix) -> Popularity:
        """Fitted on a users x items training matrix (no Dataset needed: cold-start benchmarks)."""
        model = cls(*train.shape)
        model._put("counts", np.bincount(binary_matrix(train).indices, minlength=train.shape[1]).astype(np.float32))
        return model

    def forward(self, users, items):
        return self.counts[items]

    @torch.no_grad()
    def score_all(self, users):
        return self.counts.expand(len(users), -1).clone()

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        return self.counts.expand(len(histories), -1).clone()


class ItemKNN(HistoryModel):
    """Item-based k-nearest neighbours (Deshpande & Karypis 2004; Sarwar et al. 2001).

    sim(i, j) = |U_i ∩ U_j| / (sqrt|U_i| sqrt|U_j| + shrink), cosine of the binary item
    columns shrunk towards 0 for rarely co-seen pairs; each item keeps its ``k`` most similar
    items; score(u, i) = sum over j in the user's history of sim(i, j) among i's neighbours
    (``X_u @ S``).

    State: ``[n_items, k]`` neighbour lists and weights (``O(n_items k)``); scoring multiplies
    the users' sparse rows by the sparse ``S`` built from them (at most ``n_items k`` entries),
    never a dense items x items matrix.
    """

    name = "itemknn"
    params: ClassVar[dict] = {"k": 100, "shrink": 10.0}

    def __init__(self, n_users: int, n_items: int, k: int = 100, shrink: float = 10.0):
        super().__init__(n_users, n_items)
        if int(k) != k or k < 1:
            raise ConfigError(f"itemknn: k must be a positive integer, got {k!r}")
        if shrink < 0:
            raise ConfigError(f"itemknn: shrink must be >= 0, got {shrink!r}")
        self._hparams = {"k": int(k), "shrink": float(shrink)}
        kk = min(int(k), n_items - 1)
        self.k, self.shrink = kk, float(shrink)
        # neighbours[i] are the items j most similar to target item i, weights[i] sim(i, j)
        self.neighbours = _frozen(torch.zeros(n_items, kk, dtype=torch.int64))
        self.weights = _frozen(torch.zeros(n_items, kk))
        self._sim = None

    @classmethod
    def memory_estimate(cls, n_users: int, n_items: int, nnz: int, params: dict) -> int:
        """Bytes at the peak of a fit: the neighbour lists, their sparse matrix, one block of
        dense similarities (``ITEMKNN_BLOCK`` target items by every item) and the training matrix."""
        k = min(int(params.get("k", cls.params["k"])), n_items - 1)
        return 40 * n_items * k + 40 * min(n_items, ITEMKNN_BLOCK) * n_items + 60 * nnz + 64 * 2**20

    def fit(self, dataset, cfg=None, block: int | None = None) -> ItemKNN:
        x = binary_matrix(dataset.train.matrix)
        check_memory(self.name, type(self).memory_estimate(*x.shape, x.nnz, self._hparams))
        self.set_history(x)
        nbr, w = item_knn(x, self.k, self.shrink, block or ITEMKNN_BLOCK)
        self._put("neighbours", nbr)
        self._put("weights", w)
        self._sim = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._sim = None

    def _check_state(self) -> str | None:
        nbr = self.neighbours
        if nbr.numel() and (int(nbr.min()) < 0 or int(nbr.max()) >= self.n_items):
            return f"neighbour lists name items outside 0..{self.n_items - 1}"
        return super()._check_state()

    def sparse_similarity(self) -> sp.csr_matrix:
        """``S [I (source j), I (target i)]`` as scipy CSR: the kept neighbour weights (zeros dropped)."""
        if self._sim is None:
            w = self.weights.detach().cpu().numpy().ravel()
            src = self.neighbours.cpu().numpy().ravel()
            tgt = np.repeat(np.arange(self.n_items), self.k)
            keep = w != 0
            self._sim = sp.csr_matrix((w[keep], (src[keep], tgt[keep])), shape=(self.n_items, self.n_items))
        return self._sim

    def similarity(self) -> torch.Tensor:
        """Dense ``S [I (source j), I (target i)]`` (``n_items²`` floats: small catalogues only)."""
        return torch.as_tensor(self.sparse_similarity().toarray(), device=self.weights.device)

    def item_matrix(self) -> torch.Tensor:
        return self.similarity()

    def _scores(self, x: sp.csr_matrix) -> torch.Tensor:
        """``X @ S`` for the sparse 0/1 rows ``x`` ``[B, I]``: dense ``[B, I]`` on the model's device."""
        out = (x @ self.sparse_similarity()).toarray()
        return torch.as_tensor(out, dtype=torch.float32, device=self.weights.device)

    @torch.no_grad()
    def score_all(self, users):
        return self._scores(self.history_csr(users))

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        x = history_matrix(histories, self.n_items)
        return self._scores(sp.csr_matrix(x.numpy()))


# target items per block of the neighbour search: a [block, n_items] float64 similarity block
ITEMKNN_BLOCK = 512


def item_knn(x: sp.csr_matrix, k: int, shrink: float, block: int = ITEMKNN_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` shrunk-cosine neighbours of every item: ``(neighbours [I, k], sims [I, k])``.

    Computed a block of target items at a time from the sparse co-occurrences (memory
    ``O(I * block)``), sorted by decreasing similarity, ties by item index (what a stable sort
    of the whole row gives), found by a partial sort of each row.
    """
    n_items = x.shape[1]
    counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
    norms = np.sqrt(counts)
    xt = x.T.tocsr()
    nbr = np.zeros((n_items, k), dtype=np.int64)
    sims = np.zeros((n_items, k), dtype=np.float32)
    if k == 0:
        return nbr, sims
    for s in range(0, n_items, block):
        e = min(s + block, n_items)
        co = (xt[s:e] @ x).toarray().astype(np.float64)  # [b, I]: target i's co-occurrences with every j
        den = norms[s:e, None] * norms[None, :] + shrink
        sim = np.divide(co, den, out=np.zeros_like(co), where=den > 0)
        sim[np.arange(e - s), np.arange(s, e)] = -np.inf  # an item is not its own neighbour
        nbr[s:e], block_sims = _top_k_rows(sim, k)
        sims[s:e] = block_sims
    sims[~np.isfinite(sims)] = 0.0
    return nbr, sims


def _top_k_rows(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``sim`` [b, n] (k < n): (columns, values) [b, k],
    by decreasing value, ties by lower column: a stable descending sort's first ``k``."""
    b, n = sim.shape
    kth = np.partition(sim, n - k, axis=1)[:, n - k]  # each row's k-th largest value
    above = sim > kth[:, None]
    tied = sim == kth[:, None]
    room = k - above.sum(axis=1)  # how many of the tied values make it, lowest columns first
    take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room[:, None]))
    cols = np.nonzero(take)[1].reshape(b, k)  # increasing column within each row
    vals = np.take_along_axis(sim, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)


class EASE(HistoryModel):
    """EASE (Steck, WWW 2019): an item-item weight matrix ``B`` with zero diagonal,
    minimising ||X - X B||² + l2 ||B||², in closed form: P = (XᵀX + l2 I)⁻¹,
    B = -P / diag(P) (column-wise), diag(B) = 0; score(u, ·) = X_u @ B.

    Memory and time: one dense float32 ``n_items x n_items`` matrix (the Gram matrix, inverted
    in place through its Cholesky factor, then turned into ``B``), O(n_items³) arithmetic; the
    checkpoint stores ``B`` (``4 n_items²`` bytes). A fit that would not fit in the memory
    available is refused before it starts (:meth:`memory_estimate`).
    """

    name = "ease"
    params: ClassVar[dict] = {"l2": 500.0}
    resizable = ("hist_indices", "B")

    def __init__(self, n_users: int, n_items: int, l2: float = 500.0):
        super().__init__(n_users, n_items)
        if not l2 > 0:
            raise ConfigError(f"ease: l2 must be > 0, got {l2!r}")
        self._hparams = {"l2": float(l2)}
        self.l2 = float(l2)
        self.B = _frozen(torch.zeros(0, 0))  # [n_items, n_items] once fitted or loaded

    @classmethod
    def memory_estimate(cls, n_users: int, n_items: int, nnz: int, params: dict) -> int:
        """Bytes at the peak of a fit: the dense float32 ``n_items²`` matrix, one block of its rows
        as a sparse product (2048 rows, 16 bytes an entry at worst) and the training matrix."""
        return 4 * n_items**2 + 16 * 2048 * n_items + 60 * nnz + 64 * 2**20

    def fit(self, dataset, cfg=None) -> EASE:
        x = binary_matrix(dataset.train.matrix)
        check_memory(self.name, type(self).memory_estimate(*x.shape, x.nnz, self._hparams),
                     "EASE holds a dense items x items matrix: use itemknn or gfcf for a catalogue this size")
        self.set_history(x)
        self._put("B", ease_weights(x, self.l2))
        return self

    def _check_state(self) -> str | None:
        if self.B.shape not in ((0, 0), (self.n_items, self.n_items)):
            return f"weight matrix is {tuple(self.B.shape)}, expected ({self.n_items}, {self.n_items})"
        return super()._check_state()

    def item_matrix(self) -> torch.Tensor:
        if self.B.shape != (self.n_items, self.n_items):
            raise ConfigError("ease: the model is not fitted (no weight matrix)")
        return self.B


def ease_weights(x: sp.csr_matrix, l2: float, dtype=np.float32, block: int = 2048) -> np.ndarray:
    """EASE's closed-form ``B`` (``[I, I]`` of ``dtype``) for the binary users x items ``x``.

    One dense ``[I, I]`` array: the Gram matrix (filled ``block`` rows at a time) plus ``l2 I``,
    factored (``potrf``) and inverted (``potri``) in place by LAPACK, its other triangle filled
    ``block`` rows at a time, then scaled column-wise in place: peak memory ``itemsize * I²``
    plus a ``block`` of rows and the training matrix.
    """
    from scipy.linalg import lapack

    g = _dense_gram(x, dtype, block)
    g[np.diag_indices_from(g)] += l2
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (g,))
    # the symmetric g in Fortran order (itself or its transpose, the same matrix), so that
    # LAPACK works in g's own memory; the result is in that view's upper triangle
    a = g if g.flags.f_contiguous else g.T
    c, info = potrf(a, lower=0, overwrite_a=1, clean=0)
    if info == 0:
        c, info = potri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise ConfigError(f"ease: the Gram matrix plus l2 = {l2} is not numerically positive definite in "
                          f"{np.dtype(dtype).name} (LAPACK info {info}); try a larger l2")
    g = c.T  # C order, the inverse in its lower triangle (c is a's memory unless LAPACK copied it)
    _fill_upper_from_lower(g, block)
    d = np.diag(g).copy()
    g /= -d[None, :]
    g[np.diag_indices_from(g)] = 0.0
    return g


def _dense_gram(x: sp.csr_matrix, dtype, block: int) -> np.ndarray:
    """``XᵀX`` as a dense C-ordered ``[I, I]`` array of ``dtype``, filled ``block`` rows at a time
    (no sparse copy of the whole Gram matrix)."""
    n = x.shape[1]
    xt = x.T.tocsr().astype(dtype)
    x = x.astype(dtype)
    g = np.empty((n, n), dtype=dtype)
    for s in range(0, n, block):
        g[s:s + block] = (xt[s:s + block] @ x).toarray()
    return g


def _fill_upper_from_lower(a: np.ndarray, block: int) -> None:
    """Make the square ``a`` symmetric from its lower triangle, in place, ``block`` rows at a time."""
    n = len(a)
    for s in range(0, n, block):
        e = min(s + block, n)
        a[s:e, e:] = a[e:, s:e].T
        d = a[s:e, s:e]
        d[np.triu_indices(e - s, 1)] = d.T[np.triu_indices(e - s, 1)]


class BPRMF(Model):
    """Matrix factorisation for BPR (Rendle et al., UAI 2009): logit(u, i) = p_u · q_i + b_i,
    trained by the Trainer with the pairwise loss (``loss="bpr"``, the default for this model
    on the command line). ``l2`` penalises the batch's user/item vectors and item biases."""

    name = "bpr"
    params: ClassVar[dict] = {"factors": 8, "l2": 0.0}
    config_fields = ("factors", "l2")
    default_loss: ClassVar[str] = "bpr"
    foldin_tables = ("user_emb.weight",)

    def __init__(self, n_users: int, n_items: int, factors: int = 8, l2: float = 0.0):
        super().__init__(n_users, n_items)
        if int(factors) != factors or factors < 1:
            raise ConfigError(f"bpr: factors must be a positive integer, got {factors!r}")
        if l2 < 0:
            raise ConfigError(f"bpr: l2 must be >= 0, got {l2!r}")
        self._hparams = {"factors": int(factors), "l2": float(l2)}
        self.l2 = float(l2)
        self.user_emb = nn.Embedding(n_users, int(factors))
        self.item_emb = nn.Embedding(n_items, int(factors))
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, users, items):
        return (self.user_emb(users) * self.item_emb(items)).sum(-1) + self.item_bias(items).squeeze(-1)

    @torch.no_grad()
    def score_all(self, users):
        return self.user_emb(users) @ self.item_emb.weight.T + self.item_bias.weight.T

    def item_embeddings(self):
        return self.item_emb.weight.detach()

    def regularization(self, users, items):
        if not self.l2:
            return None
        sq = self.user_emb(users).pow(2).sum() + self.item_emb(items).pow(2).sum() + self.item_bias(items).pow(2).sum()
        return self.l2 * sq / len(users)
