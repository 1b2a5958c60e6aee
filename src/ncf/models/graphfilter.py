"""Training-free graph filters over the normalised interaction matrix: GF-CF and BSPM.

Both read the training matrix ``R`` (users x items, 0/1) through its symmetric normalisation
``R̃ = D_U^-1/2 R D_I^-1/2`` (``D``: degrees; a zero degree stays 0) and score a user's row
``r_u`` (their training items) with two filters over items:

- the linear filter ``A = R̃ᵀR̃`` (item-item, normalised co-occurrence), always applied as
  ``X A = (X R̃ᵀ) R̃``: two sparse products, never a dense items x items matrix;
- the ideal low-pass filter ``P = D_I^-1/2 V_k V_kᵀ D_I^1/2`` from the top-``k`` right
  singular vectors ``V_k`` of ``R̃`` (a truncated SVD at fit time: ``scipy.sparse.linalg.svds``,
  exact to its tolerance; a dense SVD for small matrices).

``gfcf`` (Shen et al., "How Powerful is Graph Convolution for Recommendation?", CIKM 2021):
``score(u) = r_u A + alpha r_u P``.

``bspm`` (Choi et al., "Blurring-Sharpening Process Models for Collaborative Filtering",
SIGIR 2023), in the order of the authors' reference code: the ideal output ``r_u P``; the
blurring ODE ``dx/dt = x A - x`` from ``x(0) = r_u`` over ``[0, blur_time]``; the sharpening
ODE ``dx/dt = -x A`` over ``[0, sharpen_time]`` starting from the blurred output plus
``ideal_weight`` times the ideal output (``early_merge``; otherwise from the blurred output,
the ideal term added at the end); each ODE solved by ``*_steps`` fixed steps of Euler or
classical RK4 (on these linear ODEs every four-stage fourth-order rule, the 3/8 rule of
``torchdiffeq``'s ``rk4`` included, gives the same step). ``point_combination``: the mean
over every step's output of both processes instead of the last one.

State (safetensors buffers): the training matrix's CSR structure (``hist_indptr``,
``hist_indices``, shared with the history models) and the values of ``R̃`` on it
(``norm_data``), the item degrees and ``V_k`` (``[n_items, k]``). Memory: ``O(nnz + n_items
k)`` for the state; scoring a block of ``B`` users holds a few dense ``[B, n_items]`` arrays
(``score_all`` works through ``block`` users at a time).
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from ncf.errors import ConfigError
from ncf.models.base import check_memory
from ncf.models.baselines import HistoryModel, _frozen, binary_matrix, history_matrix

# below this many rows or columns the truncated SVD is a dense one (exact, and svds needs k < min(shape))
DENSE_SVD_LIMIT = 2000
SOLVERS = ("euler", "rk4")


def normalised(x: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(R̃, item degrees)``: ``D_U^-1/2 X D_I^-1/2`` (float32 CSR, the structure of ``x``) of a 0/1 ``x``."""
    du = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    di = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
    inv_u = np.divide(1.0, np.sqrt(du), out=np.zeros_like(du), where=du > 0)
    inv_i = np.divide(1.0, np.sqrt(di), out=np.zeros_like(di), where=di > 0)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    data = (x.data * inv_u[rows] * inv_i[x.indices]).astype(np.float32)
    return sp.csr_matrix((data, x.indices, x.indptr), shape=x.shape), di.astype(np.float32)


def top_right_singular_vectors(m: sp.csr_matrix, k: int) -> np.ndarray:
    """``[n_cols, k]`` float32: the right singular vectors of the ``k`` largest singular values,
    by decreasing value; columns whose singular value is 0 (beyond the rank) are zeros."""
    k = min(k, min(m.shape))
    if min(m.shape) <= DENSE_SVD_LIMIT or k >= min(m.shape) - 1:
        _, s, vt = np.linalg.svd(m.toarray().astype(np.float64), full_matrices=False)
        s, vt = s[:k], vt[:k]
    else:
        from scipy.sparse.linalg import svds

        _, s, vt = svds(m.astype(np.float64), k=k, random_state=0)
        order = np.argsort(-s)
        s, vt = s[order], vt[order]
    v = vt.T.astype(np.float32)
    if len(s):
        v[:, s <= s[0] * 1e-6] = 0.0
    return np.ascontiguousarray(v)


class GraphFilterModel(HistoryModel):
    """Shared state and filters of ``gfcf`` and ``bspm`` (see the module docstring)."""

    resizable = ("hist_indices", "norm_data", "vk")
    block: ClassVar[int] = 1024  # users per internal pass of score_all (bounds its temporaries)

    def __init__(self, n_users: int, n_items: int, factors: int):
        super().__init__(n_users, n_items)
        if int(factors) != factors or factors < 0:
            raise ConfigError(f"{self.name}: factors must be an integer >= 0, got {factors!r}")
        k = min(int(factors), n_users, n_items)
        self.norm_data = _frozen(torch.zeros(0))
        self.item_degree = _frozen(torch.zeros(n_items))
        self.vk = _frozen(torch.zeros(n_items, k))
        self._ops = None

    @classmethod
    def memory_estimate(cls, n_users: int, n_items: int, nnz: int, params: dict) -> int:
        """Bytes at the peak of a fit: the matrix (a few copies of nnz values and indices), the
        SVD's float64 Lanczos basis and singular vectors, or the dense SVD of a small matrix."""
        k = min(int(params.get("factors", cls.params.get("factors", 0))), n_users, n_items)
        sparse = 60 * nnz
        if min(n_users, n_items) <= DENSE_SVD_LIMIT:
            svd = 8 * 3 * n_users * n_items
        else:
            svd = 8 * ((2 * k + 1) * min(n_users, n_items) + k * (n_users + n_items)) * 2
        return sparse + svd + 4 * n_items * k + 64 * 2**20

    def fit(self, dataset, cfg=None) -> GraphFilterModel:
        x = binary_matrix(dataset.train.matrix)
        check_memory(self.name, type(self).memory_estimate(*x.shape, x.nnz, self._hparams))
        self.set_history(x)  # sorts indices: R̃ is built on the stored order
        x = sp.csr_matrix((np.ones(len(self.hist_indices), np.float32), self.hist_indices.numpy(),
                           self.hist_indptr.numpy()), shape=x.shape)
        norm, degree = normalised(x)
        self._put("norm_data", norm.data)
        self._put("item_degree", degree)
        if self.vk.shape[1]:
            self._put("vk", top_right_singular_vectors(norm, self.vk.shape[1]))
        self._ops = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ops = None

    def _check_state(self) -> str | None:
        if len(self.norm_data) != len(self.hist_indices):
            return f"normalised matrix has {len(self.norm_data)} values for {len(self.hist_indices)} entries"
        return super()._check_state()

    # -- the two filters --------------------------------------------------------------

    def _operators(self):
        """(R̃ [U, I], R̃ᵀ [I, U]) as scipy CSR and as torch sparse CSR on the model's device, built once."""
        dev = self.norm_data.device
        if self._ops is None or self._ops[2].device != dev:
            norm = sp.csr_matrix((self.norm_data.cpu().numpy(), self.hist_indices.cpu().numpy(),
                                  self.hist_indptr.cpu().numpy()), shape=(self.n_users, self.n_items))
            norm_t = norm.T.tocsr()
            self._ops = (norm, norm_t, _torch_csr(norm, dev), _torch_csr(norm_t, dev))
        return self._ops

    def linear(self, zt: torch.Tensor) -> torch.Tensor:
        """``(X A)ᵀ = R̃ᵀ (R̃ Xᵀ)`` for the dense ``zt = Xᵀ`` ``[n_items, B]`` (rows transposed: the
        dense operands of the sparse products stay contiguous)."""
        _, _, r, rt = self._operators()
        return rt @ (r @ zt)

    def linear_rows(self, x: sp.csr_matrix) -> torch.Tensor:
        """``(X A)ᵀ`` ``[n_items, B]`` for sparse 0/1 rows ``x`` ``[B, n_items]``: ``R̃ Xᵀ`` as a
        sparse product (a few percent of it is non-zero on Gowalla), then ``R̃ᵀ`` times it dense."""
        norm, _, _, rt = self._operators()
        w = (norm @ x.T.tocsc()).toarray()
        return rt @ torch.as_tensor(w, dtype=torch.float32, device=self.norm_data.device)

    def ideal_rows(self, x: sp.csr_matrix) -> torch.Tensor:
        """``(X P)ᵀ`` ``[n_items, B]`` for sparse 0/1 rows ``x``: ``X D_I^-1/2 V_k`` from the rows' entries."""
        d = self.item_degree
        inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d)).cpu().numpy()
        left = x @ (inv[:, None] * self.vk.cpu().numpy())  # [B, k]
        left = torch.as_tensor(np.ascontiguousarray(left.T), dtype=torch.float32, device=d.device)
        return d.sqrt()[:, None] * (self.vk @ left)

    def filter_rows(self, x: sp.csr_matrix) -> torch.Tensor:
        """``[n_items, B]`` scores (transposed) of the sparse 0/1 rows ``x`` ``[B, n_items]``."""
        raise NotImplementedError

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        users = torch.as_tensor(users).long()
        out = torch.empty(len(users), self.n_items, device=self.norm_data.device)
        for s in range(0, len(users), self.block):
            out[s:s + self.block] = self.filter_rows(self.history_csr(users[s:s + self.block])).T
        return out

    @torch.no_grad()
    def score_histories(self, histories: list[torch.Tensor], users=None) -> torch.Tensor:
        """The filter applied to the 0/1 rows of the histories (nothing to fold in)."""
        x = history_matrix(histories, self.n_items)
        return self.filter_rows(sp.csr_matrix(x.numpy())).T.contiguous()


def _torch_csr(m: sp.csr_matrix, device) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": nothing for a user to act on
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.as_tensor(m.indptr, dtype=torch.int64),
                                       torch.as_tensor(m.indices, dtype=torch.int64),
                                       torch.as_tensor(m.data, dtype=torch.float32), size=m.shape,
                                       check_invariants=False).to(device)


class GFCF(GraphFilterModel):
    """GF-CF: ``score(u) = r_u R̃ᵀR̃ + alpha r_u D_I^-1/2 V_k V_kᵀ D_I^1/2`` (module docstring).
    Published on Gowalla (alpha 0.3, k 256): Recall@20 0.1849, NDCG@20 0.1518."""

    name = "gfcf"
    params: ClassVar[dict] = {"alpha": 0.3, "factors": 256}

    def __init__(self, n_users: int, n_items: int, alpha: float = 0.3, factors: int = 256):
        if not alpha >= 0:
            raise ConfigError(f"gfcf: alpha must be >= 0, got {alpha!r}")
        super().__init__(n_users, n_items, factors)
        self._hparams = {"alpha": float(alpha), "factors": int(factors)}
        self.alpha = float(alpha)

    def filter_rows(self, x):
        out = self.linear_rows(x)
        if self.alpha and self.vk.shape[1]:
            out += self.alpha * self.ideal_rows(x)
        return out


def ode_solve(f, y: torch.Tensor, time: float, steps: int, solver: str, keep: list | None = None,
              f0: torch.Tensor | None = None) -> torch.Tensor:
    """``y(time)`` of ``dy/dt = f(y)`` by ``steps`` fixed steps of ``solver`` ("euler" or "rk4",
    classical); every step's output appended to ``keep`` when given; ``f0``: ``f(y)`` at the
    start, when already known."""
    h = time / steps
    for step in range(steps):
        k1 = f0 if (step == 0 and f0 is not None) else f(y)
        if solver == "euler":
            y = y + h * k1
        else:
            k2 = f(y + (h / 2) * k1)
            k3 = f(y + (h / 2) * k2)
            k4 = f(y + h * k3)
            y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        if keep is not None:
            keep.append(y)
    return y


class BSPM(GraphFilterModel):
    """BSPM: blurring with the linear filter, the ideal low-pass term, then sharpening (module
    docstring). The defaults are the reference code's Gowalla command (k 448, ideal weight 0.2,
    one Euler blurring step over T_b = 1, one RK4 sharpening step over T_s = 2.5, early merge),
    published at Recall@20 0.1920, NDCG@20 0.1597."""

    name = "bspm"
    params: ClassVar[dict] = {"factors": 448, "ideal_weight": 0.2, "blur_time": 1.0, "blur_steps": 1,
                              "blur_solver": "euler", "sharpen_time": 2.5, "sharpen_steps": 1,
                              "sharpen_solver": "rk4", "early_merge": True, "point_combination": False}

    def __init__(self, n_users: int, n_items: int, factors: int = 448, ideal_weight: float = 0.2,
                 blur_time: float = 1.0, blur_steps: int = 1, blur_solver: str = "euler",
                 sharpen_time: float = 2.5, sharpen_steps: int = 1, sharpen_solver: str = "rk4",
                 early_merge: bool = True, point_combination: bool = False):
        checks = [
            (ideal_weight >= 0, f"ideal_weight must be >= 0, got {ideal_weight!r}"),
            (blur_time >= 0, f"blur_time must be >= 0, got {blur_time!r}"),
            (sharpen_time >= 0, f"sharpen_time must be >= 0, got {sharpen_time!r}"),
            (int(blur_steps) == blur_steps and blur_steps >= 1, f"blur_steps must be an integer >= 1, "
                                                                f"got {blur_steps!r}"),
            (int(sharpen_steps) == sharpen_steps and sharpen_steps >= 1, f"sharpen_steps must be an integer >= 1, "
                                                                         f"got {sharpen_steps!r}"),
            (blur_solver in SOLVERS, f"blur_solver must be one of {', '.join(SOLVERS)}, got {blur_solver!r}"),
            (sharpen_solver in SOLVERS, f"sharpen_solver must be one of {', '.join(SOLVERS)}, "
                                        f"got {sharpen_solver!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"bspm: {msg}")
        super().__init__(n_users, n_items, factors)
        self._hparams = {"factors": int(factors), "ideal_weight": float(ideal_weight),
                         "blur_time": float(blur_time), "blur_steps": int(blur_steps), "blur_solver": blur_solver,
                         "sharpen_time": float(sharpen_time), "sharpen_steps": int(sharpen_steps),
                         "sharpen_solver": sharpen_solver, "early_merge": bool(early_merge),
                         "point_combination": bool(point_combination)}

    def filter_rows(self, x):
        hp = self._hparams
        use_ideal = hp["ideal_weight"] > 0 and self.vk.shape[1] > 0
        ideal = hp["ideal_weight"] * self.ideal_rows(x) if use_ideal else None
        keep = [] if hp["point_combination"] else None
        zt = torch.as_tensor(x.T.toarray(), dtype=torch.float32, device=self.norm_data.device)
        blurred = ode_solve(lambda y: self.linear(y) - y, zt, hp["blur_time"], hp["blur_steps"],
                            hp["blur_solver"], keep, f0=self.linear_rows(x) - zt)
        start = blurred + ideal if (ideal is not None and hp["early_merge"]) else blurred
        out = ode_solve(lambda y: -self.linear(y), start, hp["sharpen_time"], hp["sharpen_steps"],
                        hp["sharpen_solver"], keep)
        if keep is not None:
            out = torch.stack(keep).mean(0)
        if ideal is not None and not hp["early_merge"]:
            out = out + ideal
        return out
