"""Slate selection under global business constraints, by Lagrangian relaxation.

The problem: every user u gets a slate of k items (never a seen one) chosen to maximise the
total predicted relevance ``sum p(u, i)`` subject to constraints over ALL users' slates
(:mod:`ncf.rerank.constraints`). Relaxing each linear constraint ``sum a x OP target`` with
a multiplier ``lambda >= 0`` decouples the users: each user's slate is simply the top-k of

    utility(u, i) = p(u, i) + sum_c lambda_c * sign_c * a_c(u, i) + nu_i
                  = p(u, i) * weight_i + offset_i

(``a = p * price`` for revenue, ``a = v_i`` for shares and means), which is one affine
transform per item: the same re-ranking can be applied per request (:class:`PerRequestReranker`).

Multipliers (dual ascent):

- one linear constraint: bisection on its lambda for the smallest value that meets it (the
  dual optimum; complementary slackness gives lambda = 0 when the constraint is slack);
- several: Gauss-Seidel sweeps, each coordinate re-bisected with the others fixed (exact
  coordinate minimisation of the convex dual), until every constraint holds and the
  multipliers are stable; the best feasible slates seen at any evaluation are kept.
- with coverage among several constraints, the coverage bonuses are re-fitted (warm-started)
  inside every bisection step from the second sweep on.
- if no evaluated setting meets every constraint (discreteness: the LP optimum mixes a few
  users' slates), a greedy primal repair swaps single slots of the fewest users, best
  violation-fixed per relevance-lost first; those users' slates (``repaired_users``) are then
  not exactly the top-k of the utility that the per-request path applies.

Coverage (``coverage>=N``, distinct items) is not linear. Its relaxation is a per-item
exposure bonus ``nu_i >= 0`` shared by all users: while fewer than N items are recommended,
each uncovered item i is priced at ``c_i = min_u (kth_u - utility(u, i))``, the smallest
utility loss of a user u giving up their k-th slot (only users whose k-th item is also
recommended to someone else, so that no covered item is lost); the cheapest uncovered items
(one per donor user per round) get ``nu_i += c_i`` and the round repeats. These are the
per-item multipliers of ``y_i <= sum_u x(u, i)`` in the MILP; the multiplier reported for
coverage is the largest bonus paid, the marginal relevance cost of the last item covered.
Once the target is met, over-paid bonuses are trimmed: an item held by several users keeps
only the holder with the largest margin, and surplus coverage drops the dearest bonuses.

Relevance matrices are dense ``[n_users, n_items]`` tensors (ML-1M: 6040 x 3706 float32,
90 MB), processed in chunks of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ncf.errors import ConfigError
from ncf.recommend import top_k, top_k_rows
from ncf.rerank.attributes import ItemAttributes
from ncf.rerank.constraints import Constraint, ConstraintError, Linear, bind

RERANK_FILE = "rerank.json"
RERANK_FORMAT = 1


@dataclass
class Evaluation:
    """The slates for one setting of the multipliers."""

    items: torch.Tensor  # [U, k] int64, best first
    valid: torch.Tensor  # [U, k] bool: the slot holds an eligible item
    relevance: float  # total p over valid slots
    achieved: list[float]  # one per linear constraint, in the constraint's units
    exposure: np.ndarray  # [I] how many slates hold each item
    kth: torch.Tensor  # [U] utility of each user's last valid slot

    @property
    def coverage(self) -> int:
        return int((self.exposure > 0).sum())


@dataclass
class Solution:
    items: np.ndarray  # [U, k] item indexes, best first; -1 where a user has fewer eligible items
    constraints: list[Constraint]
    achieved: list[float]
    satisfied: list[bool]
    multipliers: dict[str, float]
    weight: np.ndarray  # [I] utility = p * weight + offset
    offset: np.ndarray  # [I] (-inf for items that may not be recommended)
    item_bonus: np.ndarray  # [I] coverage bonuses nu
    total_relevance: float
    n_slots: int
    coverage: int
    evaluations: int
    sweeps: int
    messages: list[str] = field(default_factory=list)
    repaired_users: int = 0  # users whose slates the greedy repair changed (not top-k of utility)
    unconstrained: list[float] | None = None  # each constraint's value for the plain top-k slates

    @property
    def mean_relevance(self) -> float:
        return self.total_relevance / max(self.n_slots, 1)

    @property
    def feasible(self) -> bool:
        return all(self.satisfied)

    def constraint_report(self) -> list[dict]:
        """One dict per constraint; ``unconstrained``: its value for the plain top-k slates."""
        out = [{"expr": c.expr, "target": c.target, "achieved": a, "satisfied": s}
               for c, a, s in zip(self.constraints, self.achieved, self.satisfied, strict=True)]
        for d, x in zip(out, self.unconstrained or [None] * len(out), strict=True):
            d["unconstrained"] = x
        return out


class SlateProblem:
    """Relevance ``[U, I]`` (probabilities), seen mask, slate size and constraints.

    ``relevance``: float tensor; ``excluded``: bool tensor ``[U, I]`` (seen items) or None;
    ``forbidden``: bool ``[I]`` items nobody may get (e.g. items without attributes).
    """

    def __init__(self, relevance: torch.Tensor, excluded: torch.Tensor | None, k: int,
                 attrs: ItemAttributes, constraints: list[Constraint], forbidden: np.ndarray | None = None,
                 chunk_rows: int | None = None):
        if relevance.dim() != 2:
            raise ConfigError(f"relevance must be [users, items], got shape {tuple(relevance.shape)}")
        n_users, n_items = relevance.shape
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if attrs.n_items != n_items:
            raise ConfigError(f"attributes cover {attrs.n_items} items, the relevance matrix {n_items}")
        if not torch.isfinite(relevance).all():
            raise ConfigError("relevance holds NaN or infinite values")
        self.k = min(k, n_items)
        self.dtype = relevance.dtype
        self.mask = torch.zeros_like(relevance, dtype=torch.bool) if excluded is None else excluded.bool()
        if self.mask.shape != relevance.shape:
            raise ConfigError(f"excluded mask {tuple(self.mask.shape)} != relevance {tuple(relevance.shape)}")
        self.P = relevance.masked_fill(self.mask, 0.0)
        self.forbidden = np.zeros(n_items, bool) if forbidden is None else np.asarray(forbidden, bool)
        self.attrs = attrs
        self.constraints = list(constraints)
        covs = [c for c in constraints if c.kind == "coverage"]
        self.coverage = covs[0] if covs else None
        self.linear: list[Linear] = [lin for c in constraints if (lin := bind(c, attrs)) is not None]
        self.chunk = chunk_rows or max(1, (1 << 22) // max(n_items, 1))
        eligible = (~self.mask) & torch.as_tensor(~self.forbidden)[None, :]
        self.slots_per_user = eligible.sum(1).clamp(max=self.k)
        self.n_slots = int(self.slots_per_user.sum())
        self.n_users = n_users
        self.n_items = n_items
        self.evaluations = 0
        self._best: tuple[float, np.ndarray, np.ndarray, Evaluation] | None = None
        self.progress: Callable[[str], None] | None = None

    # --- the primal for given multipliers ----------------------------------------------------

    def affine(self, lam: np.ndarray, nu: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, offset) per item: utility = p * weight + offset."""
        w = np.ones(self.n_items)
        b = np.array(nu, dtype=np.float64, copy=True)
        for lmb, lin in zip(lam, self.linear, strict=True):
            term = lmb * lin.constraint.sign * lin.v
            if lin.uses_p:
                w += term
            else:
                b += term
        b[self.forbidden] = -np.inf
        return torch.as_tensor(w, dtype=self.dtype), torch.as_tensor(b, dtype=self.dtype)

    def _utility(self, rows: slice, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = torch.addcmul(b, self.P[rows], w)
        return a.masked_fill_(self.mask[rows], -math.inf)

    def slates(self, w: torch.Tensor, b: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items and utilities of every user: ``[U, k]`` each."""
        k = self.k if k is None else min(k, self.n_items)
        idx = torch.empty((self.n_users, k), dtype=torch.int64)
        val = torch.empty((self.n_users, k), dtype=self.dtype)
        for s in range(0, self.n_users, self.chunk):
            r = slice(s, s + self.chunk)
            v, i = top_k_rows(self._utility(r, w, b), k)
            idx[r], val[r] = i, v
        return idx, val

    def measure(self, items: torch.Tensor, valid: torch.Tensor) -> tuple[float, list[float], np.ndarray]:
        """(total relevance, achieved value of each linear constraint, exposure) of given slates."""
        p = torch.where(valid, self.P.gather(1, items.clamp(min=0)), torch.zeros((), dtype=self.dtype))
        p64 = p.double()
        flat = items[valid].numpy()
        exposure = np.bincount(flat, minlength=self.n_items)
        achieved = []
        for lin in self.linear:
            v = torch.as_tensor(lin.v)[items.clamp(min=0)] * valid
            total = float((v * p64).sum() if lin.uses_p else v.sum())
            achieved.append(total / (self.n_users if lin.per_slate else max(self.n_slots, 1)))
        return float(p64.sum()), achieved, exposure

    def evaluate(self, lam: np.ndarray, nu: np.ndarray) -> Evaluation:
        w, b = self.affine(lam, nu)
        items, vals = self.slates(w, b)
        valid = torch.isfinite(vals)
        rel, achieved, exposure = self.measure(items, valid)
        last = (valid.sum(1) - 1).clamp(min=0)
        kth = vals.gather(1, last[:, None])[:, 0]
        ev = Evaluation(items, valid, rel, achieved, exposure, kth)
        self.evaluations += 1
        if self.feasible(ev) and self._better(rel, lam, nu):
            self._best = (rel, np.array(lam, dtype=np.float64), np.array(nu, dtype=np.float64), ev)
        return ev

    def _better(self, rel: float, lam: np.ndarray, nu: np.ndarray) -> bool:
        """More relevance than the best feasible so far; on a tie, smaller multipliers."""
        if self._best is None:
            return True
        best, blam, bnu, _ = self._best
        tie = abs(rel - best) <= 1e-12 * max(1.0, abs(best))
        if tie:
            return float(np.sum(lam) + np.sum(nu)) < float(np.sum(blam) + np.sum(bnu))
        return rel > best

    def satisfied(self, ev: Evaluation) -> list[bool]:
        out = [lin.constraint.satisfied(a) for lin, a in zip(self.linear, ev.achieved, strict=True)]
        if self.coverage is not None:
            out.append(ev.coverage >= self.coverage.target)
        return out

    def feasible(self, ev: Evaluation) -> bool:
        return all(self.satisfied(ev))

    # --- reachability ------------------------------------------------------------------------

    def extreme(self, j: int) -> float:
        """The best value linear constraint j can reach on its own (top-k of sign * a)."""
        lin = self.linear[j]
        s = lin.constraint.sign * lin.v
        zero = np.zeros(self.n_items)
        w, b = (s, zero) if lin.uses_p else (zero, s)
        b = b.copy()
        b[self.forbidden] = -np.inf
        items, vals = self.slates(torch.as_tensor(w, dtype=self.dtype), torch.as_tensor(b, dtype=self.dtype))
        return self.measure(items, torch.isfinite(vals))[1][j]

    def max_coverage(self) -> int:
        """An upper bound on distinct items: items some user may get, at most the number of slots."""
        eligible = ((~self.mask).any(0).numpy()) & ~self.forbidden
        return int(min(eligible.sum(), self.n_slots))

    def check_reachable(self) -> None:
        """Raise :class:`ConstraintError` naming each constraint no slates can meet, and by how much."""
        problems = []
        for j, lin in enumerate(self.linear):
            c = lin.constraint
            best = self.extreme(j)
            if not c.satisfied(best):
                bound = "at most" if c.op == ">=" else "at least"
                problems.append(f"{c.expr}: unreachable: the {c.describe()} is {bound} {best:.6g} over these "
                                f"users' unseen items (target {c.target:g}, off by {abs(best - c.target):.6g})")
        if self.coverage is not None:
            mx = self.max_coverage()
            if self.coverage.target > mx:
                problems.append(f"{self.coverage.expr}: unreachable: at most {mx} distinct items can be "
                                f"recommended ({self.n_slots} slots; target {self.coverage.target:g}, "
                                f"short by {self.coverage.target - mx:g})")
        if problems:
            raise ConstraintError("; ".join(problems))

    # --- dual ascent -------------------------------------------------------------------------

    def _say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)

    def _bisect(self, j: int, lam: np.ndarray, nu: np.ndarray, rtol: float,
                nested: bool = False) -> tuple[float, np.ndarray]:
        """Smallest lambda_j >= 0 (others fixed) whose slates meet linear constraint j, and the
        coverage bonuses there: ``nu`` fixed, or (``nested``) re-fitted at every trial value."""
        c = self.linear[j].constraint
        found: dict[float, np.ndarray] = {}

        def ok(x: float) -> bool:
            trial = lam.copy()
            trial[j] = x
            self._say(f"{c.expr}: lambda={x:.6g}")
            n = self._coverage_bonus(trial, start=nu) if nested else nu
            found[x] = n
            return c.satisfied(self.evaluate(trial, n).achieved[j])

        def done(x: float) -> tuple[float, np.ndarray]:
            return x, found[x]

        cur = float(lam[j])
        if cur > 0 and ok(cur):
            hi, lo, x = cur, None, cur
            while lo is None:
                x /= 4
                if x < 1e-12 * max(cur, 1.0):
                    return done(0.0) if ok(0.0) else done(hi)
                if ok(x):
                    hi = x
                else:
                    lo = x
        else:
            if cur == 0 and ok(0.0):
                return done(0.0)
            lo = cur
            mag = float(np.abs(self.linear[j].v).mean()) or 1.0
            hi = max(2 * cur, 1.0 / mag)
            for _ in range(200):
                if ok(hi):
                    break
                lo, hi = hi, hi * 2
            else:
                raise ConstraintError(f"{c.expr}: not met even with multiplier {hi:.3g} "
                                      "given the other constraints")
        while hi - lo > rtol * hi:
            mid = 0.5 * (lo + hi)
            if ok(mid):
                hi = mid
            else:
                lo = mid
        return done(hi)

    def _coverage_bonus(self, lam: np.ndarray, start: np.ndarray | None = None, rounds: int = 100) -> np.ndarray:
        """Per-item bonuses nu >= 0 that bring coverage to the target (see module docstring),
        from zero or warm-started from ``start``."""
        target = int(self.coverage.target)
        nu = np.zeros(self.n_items) if start is None else np.array(start, dtype=np.float64, copy=True)
        for _ in range(rounds):
            ev = self.evaluate(lam, nu)
            covered = ev.exposure > 0
            need = target - int(covered.sum())
            self._say(f"{self.coverage.expr}: {int(covered.sum())} items covered")
            if need <= 0:
                trimmed = self._trim(lam, nu, ev, target)
                if trimmed is None:
                    break
                nu = trimmed
                continue
            last = (ev.valid.sum(1) - 1).clamp(min=0)
            kth_item = ev.items.gather(1, last[:, None])[:, 0].numpy()
            full = (ev.valid.sum(1) == self.k).numpy()
            donor = full & (ev.exposure[kth_item] > 1)
            cost, user = self._cheapest_users(lam, nu, ev.kth, donor, covered)
            cand = np.flatnonzero(np.isfinite(cost))
            if not len(cand):
                break
            cand = cand[np.argsort(cost[cand], kind="stable")]
            # one new item per donor user, and no donated item given up by all its holders
            _, first = np.unique(user[cand], return_index=True)
            cand = cand[np.sort(first)]
            donated = kth_item[user[cand]]
            order = np.argsort(donated, kind="stable")
            d_sorted = donated[order]
            keep = np.zeros(len(cand), bool)
            keep[order] = _rank_in_groups(d_sorted) < ev.exposure[d_sorted] - 1
            pick = cand[keep][:need]
            nu[pick] += cost[pick] + self._eps(ev.kth.double().numpy()[user[pick]])
        return nu

    def _eps(self, at: np.ndarray) -> np.ndarray:
        """A margin that makes a raised item beat the value ``at`` it was priced against."""
        return (1e-4 if self.dtype == torch.float32 else 1e-7) * np.maximum(1.0, np.abs(at))

    def _trim(self, lam: np.ndarray, nu: np.ndarray, ev: Evaluation, target: int) -> np.ndarray | None:
        """Lower over-paid coverage bonuses while coverage stays >= target (None: nothing to lower).

        A bonus item held by several users is lowered until only the user with the largest margin
        over their (k+1)-th item keeps it; with coverage above target, the most expensive bonuses
        are dropped. The freed slots go to the users' next items by utility."""
        w, b = self.affine(lam, nu)
        items, vals = self.slates(w, b, self.k + 1)
        if items.shape[1] <= self.k:
            return None
        margin = (vals[:, : self.k] - vals[:, self.k: self.k + 1]).double().numpy().ravel()
        held = items[:, : self.k].numpy().ravel()
        ok = np.isfinite(margin) & (nu[held] > 0) & (ev.exposure[held] > 1)
        cut = np.zeros(self.n_items)
        if ok.any():
            h, m = held[ok], margin[ok]
            order = np.lexsort((-m, h))
            h, m = h[order], m[order]
            second = _rank_in_groups(h) == 1
            cut[h[second]] = np.minimum(nu[h[second]], m[second] + self._eps(m[second]))
        surplus = ev.coverage - target
        drop = np.zeros(self.n_items, bool)
        if surplus > 0:
            bonus = np.flatnonzero((nu > 0) & (cut == 0))
            drop[bonus[np.argsort(-nu[bonus], kind="stable")][:surplus]] = True
        for trial_cut in (np.where(drop, nu, cut), cut):
            if not trial_cut.any():
                continue
            trial = np.maximum(nu - trial_cut, 0.0)
            if self.evaluate(lam, trial).coverage >= target:
                return trial
        return None

    def _cheapest_users(self, lam, nu, kth: torch.Tensor, donor: np.ndarray,
                        covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each item: min over donor users of (kth_u - utility(u, i)) and that user (inf if none)."""
        w, b = self.affine(lam, nu)
        best = torch.full((self.n_items,), math.inf, dtype=torch.float64)
        who = torch.zeros(self.n_items, dtype=torch.int64)
        rows = np.flatnonzero(donor)
        for s in range(0, len(rows), self.chunk):
            r = torch.as_tensor(rows[s: s + self.chunk])
            u = torch.addcmul(b, self.P[r], w).masked_fill_(self.mask[r], -math.inf)
            gap = (kth[r, None] - u).double()
            m, arg = gap.min(0)
            better = m < best
            best = torch.where(better, m, best)
            who = torch.where(better, r[arg], who)
        best[torch.as_tensor(covered)] = math.inf
        return best.numpy(), who.numpy()

    def solve(self, max_sweeps: int = 8, rtol: float = 1e-3, check: bool = True, repair: bool = True,
              max_evals: int = 500) -> Solution:
        """Multipliers by dual ascent; the best feasible slates found (or the last ones, flagged).

        Sweeps stop after ``max_sweeps`` or once ``max_evals`` slate evaluations are spent (each is
        one top-k over the whole relevance matrix); then the greedy repair runs if still infeasible."""
        if check:
            self.check_reachable()
        n = len(self.linear)
        lam = np.zeros(n)
        nu = np.zeros(self.n_items)
        ev = self.evaluate(lam, nu)
        self._initial = list(ev.achieved) + ([float(ev.coverage)] if self.coverage is not None else [])
        sweeps = 0
        single = n + (self.coverage is not None) <= 1
        if self.constraints and not self.feasible(ev):
            for sweeps in range(1, max_sweeps + 1):  # noqa: B007 (reported below)
                old = lam.copy()
                # from the second sweep on, coverage bonuses are re-fitted inside each bisection
                nested = self.coverage is not None and sweeps > 1
                for j in range(n):
                    lam[j], nu = self._bisect(j, lam, nu, rtol, nested)
                if self.coverage is not None and not nested:
                    nu = self._coverage_bonus(lam)
                ev = self.evaluate(lam, nu)
                stable = np.all(np.abs(lam - old) <= 10 * rtol * np.maximum(np.abs(lam), 1e-12))
                if single or (self.feasible(ev) and stable) or self.evaluations >= max_evals:
                    break
        repaired = 0
        if repair and not self.feasible(ev):
            fixed = self._repair(lam, nu, ev)
            if fixed is not None and (self._best is None or fixed[0].relevance > self._best[0]):
                ev, repaired = fixed
                self._best = (ev.relevance, lam, nu, ev)
        messages = []
        if self._best is not None:
            _, lam, nu, ev = self._best
        else:
            bad = [c.expr for c, s in zip(self.linear_and_coverage(), self.satisfied(ev), strict=True) if not s]
            messages.append(f"the constraints could not be met together after {sweeps} sweeps: "
                            f"{', '.join(bad)} remain violated (each is reachable on its own)")
        sol = self._solution(lam, nu, ev, sweeps, messages)
        sol.repaired_users = repaired
        return sol

    def _repair(self, lam: np.ndarray, nu: np.ndarray, ev: Evaluation, extra: int | None = None,
                rounds: int = 50) -> tuple[Evaluation, int] | None:
        """Greedy primal repair of slates that violate constraints, by single-slot swaps (at most
        one per user and round), best (violation fixed) / (relevance lost) first, never breaking a
        satisfied constraint. Candidate swaps: each slot against the user's next items by utility,
        and, while coverage is short, each uncovered item into the slate of the user who loses
        least by dropping an item recommended to others. None if feasibility is not reached."""
        w, b = self.affine(lam, nu)
        k2 = self.k + (extra or max(self.k, 5))
        ext, ext_val = self.slates(w, b, k2)
        ext_ok = torch.isfinite(ext_val)
        items, valid = ev.items.clone(), ev.valid.clone()
        exposure = ev.exposure.copy()
        C = len(self.linear)
        norms = np.array([self.n_users if lin.per_slate else max(self.n_slots, 1) for lin in self.linear], float)
        signs = np.array([lin.constraint.sign for lin in self.linear], float)
        targets = np.array([lin.constraint.target for lin in self.linear], float)
        units = np.maximum(np.abs(targets), 1.0)
        ach = np.array(ev.achieved, dtype=np.float64)
        cov_t = None if self.coverage is None else float(self.coverage.target)
        vs = [torch.as_tensor(lin.v) for lin in self.linear]
        touched = np.zeros(self.n_users, bool)
        tol = 1e-9 * units

        def margins(a, cov):  # >= 0 where satisfied, in units of max(|target|, 1)
            m = (signs * (a - targets) + tol) / units
            return m if cov_t is None else np.r_[m, (cov - cov_t) / max(cov_t, 1.0)]

        def coeffs(u: torch.Tensor, i: torch.Tensor) -> list[torch.Tensor]:
            """a_c(u, i) of each linear constraint, any matching shapes of users and items."""
            p = self.P[u, i].double()
            return [v[i] * (p if lin.uses_p else 1.0) for lin, v in zip(self.linear, vs, strict=True)]

        for _ in range(rounds):
            cov_now = float((exposure > 0).sum())
            marg = margins(ach, cov_now)
            if (marg >= 0).all():
                break
            self._say(f"repair: {int((marg < 0).sum())} constraint(s) violated")
            cands = [self._swaps_next(items, valid, ext, ext_ok, exposure, coeffs, marg, norms, units, cov_t)]
            if cov_t is not None and cov_now < cov_t:
                unc = self._swaps_uncovered(items, valid, exposure, coeffs)
                if unc is not None:  # score: share of the coverage shortfall fixed per relevance lost
                    unc = (*unc[:5], unc[5] / max(cov_t, 1.0) / -marg[-1])
                cands.append(unc)
            cands = [c for c in cands if c is not None and len(c[0])]
            if not cands:
                return None
            users, slots, new, dl, loss, score = (np.concatenate(x) for x in zip(*cands, strict=True))
            order = np.argsort(-score, kind="stable")
            changed = False
            moved = np.zeros(self.n_users, bool)
            for n in order:
                u, j, i_new = int(users[n]), int(slots[n]), int(new[n])
                if moved[u]:  # one swap per user and round: the deltas were computed before it
                    continue
                j_old = int(items[u, j])
                if j_old == i_new or (items[u] == i_new).any():
                    continue
                a_new = ach + dl[n] / norms if C else ach
                cov_old = float((exposure > 0).sum())
                cov_new = cov_old + (exposure[i_new] == 0) - (exposure[j_old] == 1)
                m_old, m_new = margins(ach, cov_old), margins(a_new, cov_new)
                if ((m_new < 0) & (m_old >= 0)).any() or (np.minimum(m_new, 0) - np.minimum(m_old, 0)).sum() <= 0:
                    continue
                items[u, j] = i_new
                exposure[j_old] -= 1
                exposure[i_new] += 1
                ach = a_new
                touched[u] = moved[u] = changed = True
                if (m_new >= 0).all():
                    break
            if not changed:
                return None
        rel, achieved, exposure = self.measure(items, valid)
        fixed = Evaluation(items, valid, rel, achieved, exposure, ev.kth)
        if not self.feasible(fixed):
            return None
        return fixed, int(touched.sum())

    def _swaps_next(self, items, valid, ext, ext_ok, exposure, coeffs, marg, norms, units, cov_t):
        """Each user's best swap of a slot for one of their next items by utility:
        (users, slots, new items, linear deltas [n, C], relevance loss, score)."""
        C = len(self.linear)
        uu = torch.arange(self.n_users)[:, None]
        ok_n = ext_ok & ~(ext[:, :, None] == items[:, None, :]).any(2)
        allowed = valid[:, :, None] & ok_n[:, None, :]
        p_s = self.P.gather(1, items.clamp(min=0)).double()
        p_n = self.P.gather(1, ext.clamp(min=0)).double()
        deltas = [a_n[:, None, :] - a_s[:, :, None] for a_s, a_n in
                  zip(coeffs(uu, items.clamp(min=0)), coeffs(uu, ext.clamp(min=0)), strict=True)]
        scale = [lin.constraint.sign / norms[c] / units[c] for c, lin in enumerate(self.linear)]
        if cov_t is not None:
            ex = torch.as_tensor(exposure)
            deltas.append((ex[ext.clamp(min=0)] == 0).double()[:, None, :]
                          - (ex[items.clamp(min=0)] == 1).double()[:, :, None])
            scale.append(1.0 / max(cov_t, 1.0))
        gain = torch.zeros(allowed.shape, dtype=torch.float64)
        for c, d in enumerate(deltas):
            sd = d * scale[c]
            if marg[c] < 0:
                gain += sd / -marg[c]
            else:
                allowed &= sd >= -marg[c]
        allowed &= gain > 0
        loss = p_s[:, :, None] - p_n[:, None, :]
        ratio = torch.where(allowed, gain / loss.clamp(min=1e-12), torch.full_like(gain, -math.inf)).flatten(1)
        best, arg = ratio.max(1)
        users = torch.nonzero(torch.isfinite(best)).flatten()
        if not len(users):
            return None
        k2 = ext.shape[1]
        slots, col = arg[users] // k2, arg[users] % k2
        new = ext[users, col]
        dl = np.stack([d.flatten(1)[users, arg[users]].numpy() for d in deltas[:C]], 1) if C \
            else np.zeros((len(users), 0))
        return (users.numpy(), slots.numpy(), new.numpy(), dl, loss.flatten(1)[users, arg[users]].numpy(),
                best[users].numpy())

    def _swaps_uncovered(self, items, valid, exposure, coeffs):
        """For each uncovered item, the user who loses least relevance by taking it in place of
        their weakest item that others are also recommended (one item per user)."""
        C = len(self.linear)
        ex = torch.as_tensor(exposure)
        p_s = self.P.gather(1, items.clamp(min=0)).double()
        dup = valid & (ex[items.clamp(min=0)] >= 2)
        weak_val, weak_j = torch.where(dup, p_s, torch.full_like(p_s, math.inf)).min(1)
        rows = torch.nonzero(torch.isfinite(weak_val)).flatten()
        unc = torch.as_tensor(np.flatnonzero((exposure == 0) & ~self.forbidden))
        if not len(rows) or not len(unc):
            return None
        best = torch.full((len(unc),), math.inf, dtype=torch.float64)
        who = torch.zeros(len(unc), dtype=torch.int64)
        step = max(1, (1 << 22) // max(len(unc), 1))
        for s in range(0, len(rows), step):
            r = rows[s: s + step]
            gap = weak_val[r, None] - self.P[r][:, unc].double()
            gap = gap.masked_fill(self.mask[r][:, unc], math.inf)
            m, arg = gap.min(0)
            better = m < best
            best = torch.where(better, m, best)
            who = torch.where(better, r[arg], who)
        ok = torch.isfinite(best)
        unc, best, who = unc[ok], best[ok], who[ok]
        if not len(unc):
            return None
        order = torch.argsort(best, stable=True)
        unc, best, who = unc[order], best[order], who[order]
        first = np.unique(who.numpy(), return_index=True)[1]
        keep = torch.as_tensor(np.sort(first))
        unc, best, who = unc[keep], best[keep], who[keep]
        slots = weak_j[who]
        old = items[who, slots]
        dl = np.stack([(a_n - a_o).numpy() for a_n, a_o in zip(coeffs(who, unc), coeffs(who, old), strict=True)],
                      1) if C else np.zeros((len(unc), 0))
        score = 1.0 / best.clamp(min=1e-12)
        return who.numpy(), slots.numpy(), unc.numpy(), dl, best.numpy(), score.numpy()

    def linear_and_coverage(self) -> list[Constraint]:
        return [lin.constraint for lin in self.linear] + ([self.coverage] if self.coverage is not None else [])

    def _solution(self, lam, nu, ev: Evaluation, sweeps: int, messages: list[str]) -> Solution:
        order = self.linear_and_coverage()
        achieved = list(ev.achieved) + ([float(ev.coverage)] if self.coverage is not None else [])
        sat = self.satisfied(ev)
        by_expr = {c.expr: (a, s) for c, a, s in zip(order, achieved, sat, strict=True)}
        mult = {lin.constraint.expr: float(x) for lin, x in zip(self.linear, lam, strict=True)}
        if self.coverage is not None:
            mult[self.coverage.expr] = float(nu.max()) if len(nu) else 0.0
        w, b = self.affine(lam, nu)
        items = torch.where(ev.valid, ev.items, torch.full_like(ev.items, -1)).numpy()
        init = dict(zip([c.expr for c in order], getattr(self, "_initial", achieved), strict=True))
        return Solution(
            unconstrained=[init[c.expr] for c in self.constraints],
            items=items, constraints=self.constraints,
            achieved=[by_expr[c.expr][0] for c in self.constraints],
            satisfied=[bool(by_expr[c.expr][1]) for c in self.constraints],
            multipliers={c.expr: mult[c.expr] for c in self.constraints},
            weight=w.double().numpy(), offset=b.double().numpy(), item_bonus=np.asarray(nu, dtype=np.float64),
            total_relevance=ev.relevance, n_slots=self.n_slots, coverage=ev.coverage,
            evaluations=self.evaluations, sweeps=sweeps, messages=messages,
        )


def _rank_in_groups(sorted_keys: np.ndarray) -> np.ndarray:
    """0-based position of each entry within its run of equal keys (``sorted_keys`` grouped)."""
    n = len(sorted_keys)
    if not n:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))


def solve(relevance: torch.Tensor | np.ndarray, attrs: ItemAttributes, constraints: list[Constraint], k: int = 10,
          excluded: torch.Tensor | np.ndarray | None = None, forbidden: np.ndarray | None = None,
          progress: Callable[[str], None] | None = None, **kw) -> Solution:
    """Choose every user's top-``k`` slate under ``constraints`` (see the module docstring)."""
    rel = torch.as_tensor(relevance)
    ex = None if excluded is None else torch.as_tensor(excluded, dtype=torch.bool)
    problem = SlateProblem(rel, ex, k, attrs, constraints, forbidden)
    problem.progress = progress
    return problem.solve(**kw)


# --- per request (serving) -------------------------------------------------------------------

RELEVANCE_MODES = ("sigmoid", "minmax")


def to_relevance(scores: torch.Tensor | np.ndarray, mode: str) -> torch.Tensor:
    """Model scores -> relevance in [0, 1]: ``sigmoid`` of logits (models trained with log loss:
    a probability), or ``minmax`` per row (other scorers: a rescaled score, not a probability)."""
    s = torch.as_tensor(scores)
    if mode == "sigmoid":
        return torch.sigmoid(s.float() if not s.is_floating_point() else s)
    if mode == "minmax":
        s = s.double() if not s.is_floating_point() else s
        lo = s.min(dim=-1, keepdim=True).values
        hi = s.max(dim=-1, keepdim=True).values
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        return (s - lo) / span
    raise ConfigError(f"unknown relevance mode {mode!r} (known: {', '.join(RELEVANCE_MODES)})")


@dataclass
class Reranked:
    items: np.ndarray  # [k] item indexes, best first
    relevance: np.ndarray  # [k] p of each item
    utility: np.ndarray  # [k] p * weight + offset


class PerRequestReranker:
    """The offline multipliers applied to one request: ``utility = p * weight[i] + offset[i]``.

    Built from a run directory's ``rerank.json`` (written by ``ncf rerank DIR ... --save``), so the
    service needs neither the attributes file nor the solver.
    """

    def __init__(self, weight: np.ndarray, offset: np.ndarray, relevance: str = "sigmoid", k: int = 10,
                 spec: dict | None = None):
        if relevance not in RELEVANCE_MODES:
            raise ConfigError(f"unknown relevance mode {relevance!r} (known: {', '.join(RELEVANCE_MODES)})")
        self.weight = np.asarray(weight, dtype=np.float64)
        self.offset = np.asarray(offset, dtype=np.float64)
        if self.weight.shape != self.offset.shape or self.weight.ndim != 1:
            raise ConfigError("weight and offset must be 1-d arrays of the same length")
        self.relevance = relevance
        self.k = int(k)
        self.spec = spec or {}

    @property
    def n_items(self) -> int:
        return len(self.weight)

    @classmethod
    def from_run(cls, directory: str | Path) -> PerRequestReranker:
        from ncf.checkpoint import CheckpointError, load_config, read_json

        directory = Path(directory)
        path = directory / RERANK_FILE
        if not path.exists():
            raise CheckpointError(f"{path}: missing (run `ncf rerank {directory} --attributes FILE "
                                  "--constraint ... --save` first)")
        spec = read_json(path)
        try:
            if spec.get("format") != RERANK_FORMAT:
                raise CheckpointError(f"{path}: not an ncf rerank file (format {RERANK_FORMAT})")
            n = int(load_config(directory)["n_items"])
            w = np.asarray(spec["item_weight"], dtype=np.float64)
            b = np.asarray(spec["item_offset"], dtype=np.float64)
            if len(w) != n or len(b) != n:
                raise CheckpointError(f"{path}: holds {len(w)} item weights, the run has {n} items")
            b[np.asarray(spec.get("excluded_items", []), dtype=np.int64)] = -np.inf
            return cls(w, b, spec["relevance"], spec["k"], spec)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: malformed rerank file ({type(e).__name__}: {e})") from None

    def utility(self, item_indexes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(relevance, utility) of candidate items, from the model's raw scores for them."""
        idx = np.asarray(item_indexes, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_items):
            raise IndexError(f"item indexes must lie in [0, {self.n_items}), got {idx.min()}..{idx.max()}")
        p = to_relevance(torch.as_tensor(np.asarray(scores, dtype=np.float64)), self.relevance).numpy()
        return p, p * self.weight[idx] + self.offset[idx]

    def rerank(self, item_indexes: np.ndarray, scores: np.ndarray, k: int | None = None) -> Reranked:
        """Best ``k`` (default: the offline k) of the candidates ``item_indexes`` (seen items already
        removed) given the model's raw ``scores`` for them (logits for neural models)."""
        idx = np.asarray(item_indexes, dtype=np.int64)
        if len(idx) != len(np.asarray(scores)):
            raise ConfigError(f"{len(idx)} items but {len(np.asarray(scores))} scores")
        k = self.k if k is None else int(k)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        order = np.argsort(idx, kind="stable")  # ties by the lower item index, as everywhere
        idx, scores = idx[order], np.asarray(scores)[order]
        p, u = self.utility(idx, scores)
        top = top_k(u, None, k)
        return Reranked(idx[top], p[top], u[top])


def load_reranker(run_dir: str | Path) -> tuple[PerRequestReranker | None, str | None]:
    """(reranker, None) where ``DIR/rerank.json`` (``ncf rerank DIR ... --save``) loads; else
    (None, why not), for a request that asks for re-ranking to be told."""
    from ncf.checkpoint import CheckpointError

    path = Path(run_dir) / RERANK_FILE
    if not path.exists():
        return None, f"{path} is absent: no re-ranking multipliers for this run (`ncf rerank ... --save`)"
    try:
        return PerRequestReranker.from_run(run_dir), None
    except CheckpointError as e:
        return None, str(e)


def save_rerank(directory: str | Path, solution: Solution, relevance: str, k: int, attrs: ItemAttributes,
                extra: dict | None = None) -> Path:
    """Write ``DIR/rerank.json``: constraints, multipliers, per-item weight/offset, attribute provenance."""
    from ncf.checkpoint import atomic_write_json

    off = solution.offset.copy()
    excluded = np.flatnonzero(~np.isfinite(off))
    off[excluded] = 0.0
    spec = {
        "format": RERANK_FORMAT,
        "k": int(k),
        "relevance": relevance,
        "constraints": [c.to_dict() for c in solution.constraints],
        "multipliers": solution.multipliers,
        "achieved": solution.constraint_report(),
        "attributes": {"path": attrs.path, "sha256": attrs.sha256},
        "item_weight": solution.weight.tolist(),
        "item_offset": off.tolist(),
        "item_bonus": solution.item_bonus.tolist(),
        "excluded_items": excluded.tolist(),
        **(extra or {}),
    }
    path = Path(directory) / RERANK_FILE
    atomic_write_json(path, spec)
    return path
