"""Scoring users from stored feature vectors, and two-stage retrieval for large catalogs.

A ``Ranker`` rewrites a model's score function so that the user side is a feature vector
read from the store (not an index into the model's tables); the item side is a set of
arrays, loaded from the store once and bound with ``bind``.

``NCFRanker`` covers GMF, MLP and NeuMF exactly (tested against ``model.score_all``):

    user vector  = [p_u (GMF) ; p'_u (MLP)]                        [d]
    score(u, i)  = (w_g * p_u) . q_i  +  w_m . tower(p'_u, q'_i)  +  b

The GMF term is a dot product; the MLP term is not, so for retrieval it is replaced by its
first-order Taylor expansion around the mean user (``anchor`` a = mean of p'):

    mlp(p'_u, i) ~ b_i + J_i . (p'_u - a),   b_i = mlp(a, i),  J_i = d mlp(a, i) / d a

which makes the whole approximation one dot product of ``[w_g * p_u ; p'_u - a ; 1]`` with
the item rows ``[q_i ; J_i ; b_i]`` (computed once in ``bind``). ``rank(..., candidates=C)``
takes the C best items by that dot product (exact search: one matrix-vector product; faiss
could replace it for catalogs of millions), then ranks only those with the exact model.
Recall lost against exact full ranking: ``benchmarks/serve_load.py two-stage``.

``IndexRanker`` serves any other model: the stored "vector" is the user's index and
scoring goes through ``model.score_all``.
"""

from __future__ import annotations

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


def make_ranker(model: Model) -> Ranker:
    return NCFRanker(model) if isinstance(model, GMF | MLP | NeuMF) else IndexRanker(model)


class NCFRanker(Ranker):
    def __init__(self, model: GMF | MLP | NeuMF):
        self.model, self.n_items = model, model.n_items
        w, self.bias = model.predict.weight.detach()[0], model.predict.bias.detach()
        self.gmf = model.gmf if isinstance(model, NeuMF) else model if isinstance(model, GMF) else None
        self.tower = model.mlp.tower if isinstance(model, NeuMF) else model.tower if isinstance(model, MLP) else None
        self.f = self.gmf.user_emb.embedding_dim if self.gmf is not None else 0
        self.h = self.tower.user_emb.embedding_dim if self.tower is not None else 0
        self.w_g, self.w_m = w[:self.f], w[self.f:]
        self.user_dim = self.f + self.h
        self.can_retrieve = True
        self._items: dict[str, torch.Tensor] | None = None

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
            bound["mlp_first"] = bound["mlp"] @ first.weight.detach()[:, self.h:].T + first.bias.detach()
        self._items = bound
        self._retrieval = self._retrieval_items()

    def _mlp(self, pu: torch.Tensor, sel) -> torch.Tensor:
        """MLP term for user rows ``pu`` ([1, h] or [C, h]) and items ``sel`` -> [C]."""
        if len(self.tower.linears):
            x = torch.relu(self._items["mlp_first"][sel] + pu @ self._wu.T)  # [C, h1]
            for lin in self.tower.linears[1:]:
                x = torch.relu(lin(x))
        else:
            q = self._items["mlp"][sel]
            x = torch.cat([pu.expand(len(q), -1), q], dim=1)
        return x @ self.w_m

    def _retrieval_items(self, chunk: int = 1 << 16) -> torch.Tensor:
        """[n_items, f + h + 1] rows [q_i ; J_i ; b_i] (see the module docstring)."""
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

    @torch.no_grad()
    def retrieval_query(self, user: np.ndarray) -> np.ndarray:
        """[f + h + 1] query ``[w_g * p_u ; p'_u - a ; 1]`` of the dot-product stage."""
        if self._items is None:
            raise RuntimeError("NCFRanker.bind() was not called")
        u = torch.from_numpy(np.asarray(user, dtype=np.float32))
        parts = [u[:self.f] * self.w_g] if self.gmf is not None else []
        if self.tower is not None:
            parts += [u[self.f:] - self._items["mlp_anchor"][0], torch.ones(1)]
        return torch.cat(parts).numpy()

    def retrieval_queries(self, users: np.ndarray) -> np.ndarray:
        """[n, f + h + 1] queries of many user vectors ([n, user_dim]) at once."""
        u = np.asarray(users, dtype=np.float32)
        parts = [u[:, :self.f] * self.w_g.numpy()] if self.gmf is not None else []
        if self.tower is not None:
            parts += [u[:, self.f:] - self._items["mlp_anchor"].numpy(), np.ones((len(u), 1), np.float32)]
        return np.concatenate(parts, axis=1)

    @torch.no_grad()
    def linear_terms(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scores of ``items`` as affine functions of the user vector (exact for GMF, the
        first-order expansion for the MLP term): ``score(u, i) ~ o_i + A_i . u``; returns
        ``(A [C, user_dim], o [C])`` (float64). Fold-in fits ``u`` to these in closed form."""
        if self._items is None:
            raise RuntimeError("NCFRanker.bind() was not called")
        rows = self._retrieval[torch.from_numpy(np.asarray(items, dtype=np.int64))].double()
        parts, offset = [], self.bias.double().expand(len(rows)).clone()
        if self.gmf is not None:
            parts.append(rows[:, :self.f] * self.w_g.double())
        if self.tower is not None:
            jac = rows[:, self.f:self.f + self.h]
            parts.append(jac)
            offset += rows[:, -1] - jac @ self._items["mlp_anchor"][0].double()
        return torch.cat(parts, dim=1).numpy(), offset.numpy()

    def retrieval_rows(self) -> np.ndarray:
        """[n_items, f + h + 1] item rows of the dot-product stage (what an ANN index holds)."""
        if self._items is None:
            raise RuntimeError("NCFRanker.bind() was not called")
        return self._retrieval.numpy()

    @torch.no_grad()
    def retrieval_scores(self, user: np.ndarray) -> np.ndarray:
        """[n_items] dot products approximating the scores (exact for GMF)."""
        return (self._retrieval @ torch.from_numpy(self.retrieval_query(user))).numpy()


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
