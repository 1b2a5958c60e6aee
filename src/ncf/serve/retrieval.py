"""Scoring users from stored feature vectors, and two-stage retrieval for large catalogs.

A ``Ranker`` rewrites a model's score function so that the user side is a feature vector
read from the store (not an index into the model's tables); the item side is a set of
arrays, loaded from the store once and bound with ``bind``.

``NCFRanker`` covers GMF, MLP and NeuMF exactly (tested against ``model.score_all``):

    user vector  = [p_u (GMF) ; p'_u (MLP)]                        [d]
    score(u, i)  = (w_g * p_u) . q_i  +  w_m . tower(p'_u, q'_i)  +  b

The GMF term is a dot product; the MLP term is not, so the first stage of retrieval replaces
it by an affine function of the user, one per item: the tower's Jacobian **averaged over a
sample of the run's users** (``RETRIEVAL_USERS``, drawn once, seeded), and the matching
intercept:

    mlp(p', i) ~ b_i + J_i . p',   J_i = mean_k d mlp(p'_k, i) / d p',
                                    b_i = mean_k mlp(p'_k, i) - J_i . mean_k p'_k

which makes the whole approximation one dot product of the query ``[w_g * p_u ; p'_u ; 1]``
with the item rows ``[q_i ; J_i ; b_i]`` (computed once, on first use: ``retrieval_rows``).
For users drawn from a Gaussian, the averaged Jacobian is the least-squares affine fit of
each item's score over the users (Stein's lemma); it is what makes the first stage keep the
exact top 10 on a million-item NeuMF, where the first-order expansion at the mean user
(the Jacobian at one point, used until issue 18) kept about half of it among 500
candidates: a ReLU tower is piecewise linear, and the mean user sits on a different side of
many of its kinks than most users do (docs/RESULTS.md, issue 18).

``rank(..., candidates=C)`` takes the C best items by that dot product (exact search: one
matrix-vector product; ``ncf.serve.ann`` searches the same rows with faiss HNSW), then
ranks only those with the exact model. Recall lost against exact full ranking:
``benchmarks/serve_load.py two-stage`` and ``benchmarks/ann_serve.py``.

The first-order expansion at the mean user (``mlp_anchor``) is kept for fold-in
(``linear_terms``), which fits a vector to affine scores by Newton's method.

``IndexRanker`` serves any other model: the stored "vector" is the user's index and
scoring goes through ``model.score_all``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import numpy as np
import torch

from ncf.errors import ConfigError
from ncf.models import GMF, MLP, Model, NeuMF
from ncf.recommend import top_k


class Ranker:
    """Interface: user vectors in, scores out. ``bind`` must be called before scoring."""

    user_dim: int
    n_items: int
    can_retrieve = False

    def user_vectors(self) -> np.ndarray:  # [n_users, user_dim] float32, what the store keeps
        raise NotImplementedError

    def item_features(self) -> dict[str, np.ndarray]:  # what the store keeps per item
        raise NotImplementedError

    def bind(self, items: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def score(self, user: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """Scores of one user (vector [user_dim]) for ``items`` (indexes [C]) or all items."""
        raise NotImplementedError

    def retrieval_scores(self, user: np.ndarray) -> np.ndarray:  # [n_items], a dot product
        raise NotImplementedError(f"{type(self).__name__} has no dot-product stage")


log = logging.getLogger("ncf.serve")

RETRIEVAL_USERS = 64  # users whose tower Jacobians are averaged into the first stage's rows
RETRIEVAL_PAIRS = 1 << 18  # (item, user) pairs per chunk while computing them (~35 MB per tensor)
RETRIEVAL_METHOD = "avg-jacobian-v1"  # part of the rows' fingerprint: change it when the rows change


def make_ranker(model: Model) -> Ranker:
    return NCFRanker(model) if isinstance(model, GMF | MLP | NeuMF) else IndexRanker(model)


class NCFRanker(Ranker):
    def __init__(self, model: GMF | MLP | NeuMF, retrieval_users: int = RETRIEVAL_USERS):
        if retrieval_users < 1:
            raise ConfigError(f"retrieval_users must be >= 1, got {retrieval_users}")
        self.model, self.n_items, self.retrieval_users = model, model.n_items, retrieval_users
        w, self.bias = model.predict.weight.detach()[0], model.predict.bias.detach()
        self.gmf = model.gmf if isinstance(model, NeuMF) else model if isinstance(model, GMF) else None
        self.tower = model.mlp.tower if isinstance(model, NeuMF) else model.tower if isinstance(model, MLP) else None
        self.f = self.gmf.user_emb.embedding_dim if self.gmf is not None else 0
        self.h = self.tower.user_emb.embedding_dim if self.tower is not None else 0
        self.w_g, self.w_m = w[:self.f], w[self.f:]
        self.user_dim = self.f + self.h
        self.can_retrieve = True
        self._items: dict[str, torch.Tensor] | None = None
        self._retrieval: torch.Tensor | None = None  # [n_items, f + h + 1], on first use
        self._retrieval_lock = threading.Lock()
        self.retrieval_seconds: float | None = None  # how long the rows took (None: not computed here)

    def user_vectors(self) -> np.ndarray:
        parts = []
        if self.gmf is not None:
            parts.append(self.gmf.user_emb.weight.detach())
        if self.tower is not None:
            parts.append(self.tower.user_emb.weight.detach())
        return torch.cat(parts, dim=1).float().cpu().numpy()

    def item_features(self) -> dict[str, np.ndarray]:
        out = {}
        if self.gmf is not None:
            out["gmf"] = self.gmf.item_emb.weight.detach().float().cpu().numpy()
        if self.tower is not None:
            out["mlp"] = self.tower.item_emb.weight.detach().float().cpu().numpy()
            out["mlp_anchor"] = self.tower.user_emb.weight.detach().float().mean(0, keepdim=True).cpu().numpy()
        return out

    @torch.no_grad()
    def bind(self, items: dict[str, np.ndarray]) -> None:
        bound = {}
        shapes = {"gmf": (self.n_items, self.f), "mlp": (self.n_items, self.h), "mlp_anchor": (1, self.h)}
        for name, shape in shapes.items():
            if not shape[1]:
                continue
            arr = items.get(name)
            if arr is None or arr.shape != shape:
                got = None if arr is None else arr.shape
                raise ConfigError(f"item features {name!r}: expected shape {shape}, got {got}")
            bound[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if self.tower is not None and len(self.tower.linears):
            first = self.tower.linears[0]
            # first tower layer split in its user and item halves; the item half precomputed
            self._wu = first.weight.detach()[:, :self.h]
            # the layers after the first, as plain tensors (no module call per request)
            self._rest = [(lin.weight.detach(), lin.bias.detach()) for lin in self.tower.linears[1:]]
            bound["mlp_first"] = bound["mlp"] @ first.weight.detach()[:, self.h:].T + first.bias.detach()
        self._items = bound
        self._taylor = self._taylor_items()
        self._retrieval = None

    def _mlp(self, pu: torch.Tensor, sel) -> torch.Tensor:
        """MLP term for user rows ``pu`` ([1, h] or [C, h]) and items ``sel`` -> [C]."""
        if len(self.tower.linears):
            x = torch.relu(self._items["mlp_first"][sel] + pu @ self._wu.T)  # [C, h1]
            for weight, bias in self._rest:
                x = torch.relu(torch.nn.functional.linear(x, weight, bias))
        else:
            q = self._items["mlp"][sel]
            x = torch.cat([pu.expand(len(q), -1), q], dim=1)
        return x @ self.w_m

    def _taylor_items(self, chunk: int = 1 << 16) -> torch.Tensor:
        """[n_items, f + h + 1] rows [q_i ; J_i ; b_i] of the first-order expansion of the MLP
        term at the mean user ``a`` (``J_i`` the Jacobian at ``a``, ``b_i = mlp(a, i)``): fold-in's
        affine scores (``linear_terms``)."""
        parts = [self._items["gmf"]] if self.gmf is not None else []
        if self.tower is not None:
            jac, base = [], []
            for start in range(0, self.n_items, chunk):
                sel = torch.arange(start, min(self.n_items, start + chunk))
                with torch.enable_grad():
                    a = self._items["mlp_anchor"].expand(len(sel), -1).clone().requires_grad_(True)
                    out = self._mlp(a, sel)
                    (grad,) = torch.autograd.grad(out.sum(), a)
                jac.append(grad)
                base.append(out.detach()[:, None])
            parts += [torch.cat(jac), torch.cat(base)]
        return torch.cat(parts, dim=1)

    def retrieval_sample_indexes(self) -> np.ndarray:
        """[K] the users whose Jacobians the first stage averages: ``retrieval_users`` of the
        model's users (all of them when it has fewer), drawn with a fixed seed."""
        return np.sort(np.random.default_rng(0).permutation(self.model.n_users)[:self.retrieval_users])

    def retrieval_sample(self) -> torch.Tensor:
        """[K, h] the MLP vectors of ``retrieval_sample_indexes``."""
        users = self.tower.user_emb.weight.detach().float()
        return users[torch.from_numpy(self.retrieval_sample_indexes())]

    def _averaged_items(self) -> torch.Tensor:
        """[n_items, f + h + 1] rows [q_i ; J_i ; b_i] of the averaged Jacobian (module docstring)."""
        parts = [self._items["gmf"]] if self.gmf is not None else []
        if self.tower is None:
            return torch.cat(parts, dim=1)
        users = self.retrieval_sample()  # [K, h]
        if not len(self.tower.linears):  # no hidden layer: the MLP term is linear, w_m . [p' ; q']
            w_u, w_i = self.w_m[:self.h], self.w_m[self.h:]
            jac = w_u.expand(self.n_items, -1)
            parts += [jac, (self._items["mlp"] @ w_i)[:, None]]
            return torch.cat(parts, dim=1)
        up = users @ self._wu.T  # [K, h1] the users' part of the first layer
        chunk = max(1, RETRIEVAL_PAIRS // len(users))
        jac, base = [], []
        for start in range(0, self.n_items, chunk):
            sel = slice(start, min(self.n_items, start + chunk))
            with torch.enable_grad():
                # z[i, k] = first-layer pre-activation of (user k, item i); the rest of the tower
                # acts on each pair alone, so the gradient of the sum is every pair's own gradient
                z = (self._items["mlp_first"][sel][:, None, :] + up[None]).requires_grad_(True)
                x = torch.relu(z)
                for weight, bias in self._rest:
                    x = torch.relu(torch.nn.functional.linear(x, weight, bias))
                out = x @ self.w_m  # [n, K]
                (grad,) = torch.autograd.grad(out.sum(), z)
            jac.append(grad.mean(dim=1) @ self._wu)  # d/dp' = W_u^T d/dz, averaged over the users
            base.append(out.detach().mean(dim=1))
        jac_t = torch.cat(jac)
        parts += [jac_t, (torch.cat(base) - jac_t @ users.mean(0))[:, None]]
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def retrieval_key(self) -> str:
        """A fingerprint of everything the first stage's rows are computed from (item arrays,
        tower weights, the user sample, the method): what a persisted index is keyed by, known
        without computing the rows."""
        if self._items is None:
            raise RuntimeError("NCFRanker.bind() was not called")
        h = hashlib.sha256(f"{RETRIEVAL_METHOD} f={self.f} h={self.h} n={self.n_items} "
                           f"k={self.retrieval_users}".encode())
        arrays = [self._items[name] for name in ("gmf", "mlp_first", "mlp") if name in self._items]
        arrays += [self.w_g, self.w_m]
        if self.tower is not None:
            arrays += [self.retrieval_sample(), *(p.detach() for p in self.tower.linears.parameters())]
        for arr in arrays:
            h.update(np.ascontiguousarray(arr.float().cpu().numpy()).tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def score(self, user: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        if self._items is None:
            raise RuntimeError("NCFRanker.bind() was not called")
        u = torch.from_numpy(np.asarray(user, dtype=np.float32))
        sel = slice(None) if items is None else torch.from_numpy(np.asarray(items, dtype=np.int64))
        out = self.bias.clone()
        if self.gmf is not None:
            out = out + self._items["gmf"][sel] @ (u[:self.f] * self.w_g)  # [C]
        if self.tower is not None:
            out = out + self._mlp(u[None, self.f:], sel)
        return out.numpy()

    def retrieval_query(self, user: np.ndarray) -> np.ndarray:
        """[f + h + 1] query ``[w_g * p_u ; p'_u ; 1]`` of the dot-product stage."""
        return self.retrieval_queries(np.asarray(user)[None])[0]

    def retrieval_queries(self, users: np.ndarray) -> np.ndarray:
        """[n, f + h + 1] queries of many user vectors ([n, user_dim]) at once."""
        u = np.asarray(users, dtype=np.float32)
        parts = [u[:, :self.f] * self.w_g.numpy()] if self.gmf is not None else []
        if self.tower is not None:
            parts += [u[:, self.f:], np.ones((len(u), 1), np.float32)]
        return np.concatenate(parts, axis=1)

    @torch.no_grad()
    def linear_terms(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scores of ``items`` as affine functions of the user vector (exact for GMF, the
        first-order expansion for the MLP term): ``score(u, i) ~ o_i + A_i . u``; returns
        ``(A [C, user_dim], o [C])`` (float64). Fold-in fits ``u`` to these in closed form."""
        if self._items is None:
            raise RuntimeError("NCFRanker.bind() was not called")
        rows = self._taylor[torch.from_numpy(np.asarray(items, dtype=np.int64))].double()
        parts, offset = [], self.bias.double().expand(len(rows)).clone()
        if self.gmf is not None:
            parts.append(rows[:, :self.f] * self.w_g.double())
        if self.tower is not None:
            jac = rows[:, self.f:self.f + self.h]
            parts.append(jac)
            offset += rows[:, -1] - jac @ self._items["mlp_anchor"][0].double()
        return torch.cat(parts, dim=1).numpy(), offset.numpy()

    def _retrieval_rows(self) -> torch.Tensor:
        if self._items is None:
            raise RuntimeError("NCFRanker.bind() was not called")
        rows = self._retrieval
        if rows is None:
            with self._retrieval_lock:  # computed once (seconds to a minute for a million items)
                if self._retrieval is None:
                    t0 = time.perf_counter()
                    self._retrieval = self._averaged_items()
                    self.retrieval_seconds = round(time.perf_counter() - t0, 2)
                    log.info("first-stage rows of %d items computed in %.1f s", self.n_items, self.retrieval_seconds)
                rows = self._retrieval
        return rows

    def retrieval_rows(self) -> np.ndarray:
        """[n_items, f + h + 1] item rows of the dot-product stage (what an ANN index holds)."""
        return self._retrieval_rows().numpy()

    @torch.no_grad()
    def retrieval_scores(self, user: np.ndarray) -> np.ndarray:
        """[n_items] dot products approximating the scores minus the constant bias (exact for GMF)."""
        return (self._retrieval_rows() @ torch.from_numpy(self.retrieval_query(user))).numpy()


class IndexRanker(Ranker):
    """Any Scorer: the stored vector is the user's index (as float32)."""

    def __init__(self, model: Model):
        self.model, self.n_items, self.user_dim = model, model.n_items, 1

    def user_vectors(self) -> np.ndarray:
        return np.arange(self.model.n_users, dtype=np.float32)[:, None]

    def item_features(self) -> dict[str, np.ndarray]:
        return {}

    def bind(self, items: dict[str, np.ndarray]) -> None:
        return None

    @torch.no_grad()
    def score(self, user: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        dev = next(self.model.parameters(), torch.empty(0)).device
        u = torch.tensor([int(user[0])], device=dev)
        if items is None:
            return self.model.score_all(u)[0].float().cpu().numpy()
        it = torch.as_tensor(np.asarray(items, dtype=np.int64), device=dev)
        return self.model.score(u.expand(len(it)), it).float().cpu().numpy()


def rank(ranker: Ranker, user: np.ndarray, exclude: np.ndarray, k: int,
         candidates: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` item indexes for one user vector and their scores, ``exclude`` (bool [n_items])
    left out. ``candidates > 0``: two stages (dot-product retrieval, then the full model)."""
    if candidates and ranker.can_retrieve and candidates < ranker.n_items:
        cand = top_k(ranker.retrieval_scores(user), exclude, max(candidates, k))
        s = ranker.score(user, cand)
        order = top_k(s, None, k)
        return cand[order], s[order]
    s = ranker.score(user)
    idx = top_k(s, exclude, k)
    return idx, s[idx]
