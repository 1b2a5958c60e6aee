"""The Lagrangian re-ranker against the exact optimum (scipy.optimize.milp) on small random
instances, plus its multipliers, infeasibility messages and the per-request path."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ncf.rerank.attributes import ItemAttributes
from ncf.rerank.constraints import ConstraintError, parse_constraint, parse_constraints
from ncf.rerank.lagrangian import PerRequestReranker, SlateProblem, solve, to_relevance

K = 4


def instance(seed: int, n_users: int = 50, n_items: int = 50):
    """Low-rank logits plus a popularity slope (so that coverage binds), 20% of pairs seen,
    random prices, two overlapping categories."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 1, (n_users, 3)) @ rng.normal(0, 1, (3, n_items)) + np.linspace(2, -2, n_items)
    p = 1 / (1 + np.exp(-logit))
    seen = rng.random((n_users, n_items)) < 0.2
    cats = np.stack([rng.random(n_items) < 0.4, rng.random(n_items) < 0.3], axis=1)
    attrs = ItemAttributes(n_items, {"price": rng.uniform(1, 10, n_items).round(2),
                                     "margin": rng.uniform(0, 1, n_items)},
                           ["Drama", "Comedy"], cats, np.ones(n_items, bool))
    return p, seen, attrs


def targets(p, seen, attrs):
    """Unconstrained revenue / Drama share / coverage, and the largest reachable revenue."""
    pr = SlateProblem(torch.as_tensor(p), torch.as_tensor(seen), K, attrs,
                      parse_constraints(["revenue>=0", "category:Drama>=0"]))
    ev = pr.evaluate(np.zeros(2), np.zeros(p.shape[1]))
    return ev.achieved[0], ev.achieved[1], ev.coverage, pr.extreme(0)


SCENARIOS = [
    lambda r, d, c: [f"revenue>={r:.3f}"],
    lambda r, d, c: [f"category:Drama<={d:.3f}"],
    lambda r, d, c: [f"coverage>={c}"],
    lambda r, d, c: [f"revenue>={r:.3f}", f"category:Drama<={d:.3f}"],
    lambda r, d, c: [f"revenue>={r:.3f}", f"coverage>={c - 3}"],
    lambda r, d, c: ["mean:margin>=0.6", "category:Comedy>=0.35", f"coverage>={c - 3}"],
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scenario", range(len(SCENARIOS)))
def test_within_one_percent_of_milp(seed, scenario, milp_optimum):
    p, seen, attrs = instance(seed)
    rev0, drama0, cov0, rev_max = targets(p, seen, attrs)
    exprs = SCENARIOS[scenario](rev0 + 0.5 * (rev_max - rev0), 0.6 * drama0, cov0 + 8)
    cs = parse_constraints(exprs)
    sol = solve(p, attrs, cs, K, excluded=seen)
    best, _ = milp_optimum(p, seen, K, attrs, cs)
    assert sol.feasible, (exprs, sol.constraint_report(), sol.messages)
    for c, achieved in zip(cs, sol.achieved, strict=True):  # re-check from the slates themselves
        assert c.satisfied(achieved)
    assert not seen[np.arange(len(p))[:, None], sol.items].any()
    assert (np.sort(sol.items, 1)[:, 1:] != np.sort(sol.items, 1)[:, :-1]).all()  # no repeats
    rel = p[np.arange(len(p))[:, None], sol.items].sum()
    assert rel == pytest.approx(sol.total_relevance, rel=1e-9)
    assert rel >= 0.99 * best, (exprs, rel, best)
    assert rel <= best + 1e-6  # the optimum is an upper bound on any feasible slates


def test_no_constraints_is_plain_top_k():
    p, seen, attrs = instance(3)
    sol = solve(p, attrs, [], K, excluded=seen)
    masked = np.where(seen, -np.inf, p)
    expect = np.sort(-np.sort(-masked, 1)[:, :K], 1)
    got = np.sort(p[np.arange(len(p))[:, None], sol.items], 1)
    np.testing.assert_allclose(got, expect)
    assert sol.multipliers == {} and sol.feasible


def test_single_constraint_multiplier_is_the_smallest_that_works():
    p, seen, attrs = instance(4)
    rev0, _, _, rev_max = targets(p, seen, attrs)
    c = parse_constraint(f"revenue>={rev0 + 0.3 * (rev_max - rev0):.4f}")
    pr = SlateProblem(torch.as_tensor(p), torch.as_tensor(seen), K, attrs, [c])
    sol = pr.solve(rtol=1e-4)
    lam = sol.multipliers[c.expr]
    assert lam > 0 and sol.satisfied == [True]
    below = pr.evaluate(np.array([lam * (1 - 1e-3)]), np.zeros(p.shape[1])).achieved[0]
    assert not c.satisfied(below)
    slack = solve(p, attrs, [parse_constraint(f"revenue>={rev0 * 0.9:.4f}")], K, excluded=seen)
    assert slack.multipliers == {f"revenue>={rev0 * 0.9:.4f}": 0.0}


def test_unreachable_constraints_say_how_far():
    p, seen, attrs = instance(5)
    _, _, _, rev_max = targets(p, seen, attrs)
    with pytest.raises(ConstraintError) as e:
        solve(p, attrs, parse_constraints([f"revenue>={rev_max + 1:.3f}", "coverage>=1000"]), K, excluded=seen)
    msg = str(e.value)
    assert f"revenue>={rev_max + 1:.3f}: unreachable" in msg and "at most" in msg
    assert re.search(r"off by (0\.99|1)", msg)
    assert "coverage>=1000: unreachable: at most 50 distinct items" in msg and "short by 950" in msg
    drama_all = attrs.category_matrix[:, 0].copy()
    attrs.category_matrix[:, 0] = True  # every item is Drama: a share below 1 cannot be reached
    with pytest.raises(ConstraintError, match=r"category:Drama<=0.5: unreachable.*at least 1 .*off by 0.5"):
        solve(p, attrs, parse_constraints(["category:Drama<=0.5"]), K, excluded=seen)
    attrs.category_matrix[:, 0] = drama_all


def test_jointly_infeasible_is_reported_not_hidden():
    p, seen, attrs = instance(6)
    price = attrs.numeric["price"]
    attrs.category_matrix[:, 0] = price > np.median(price)  # the expensive half is Drama
    _, _, _, rev_max = targets(p, seen, attrs)
    cs = parse_constraints([f"revenue>={0.95 * rev_max:.3f}", "category:Drama<=0.05"])
    sol = solve(p, attrs, cs, K, excluded=seen)
    assert not sol.feasible
    assert sol.messages and "could not be met together" in sol.messages[0]
    assert [r["satisfied"] for r in sol.constraint_report()].count(False) >= 1


def test_forbidden_items_never_recommended():
    p, seen, attrs = instance(7)
    forbidden = np.zeros(p.shape[1], bool)
    forbidden[:10] = True  # the most popular items
    sol = solve(p, attrs, parse_constraints(["coverage>=30"]), K, excluded=seen, forbidden=forbidden)
    assert not np.isin(sol.items, np.flatnonzero(forbidden)).any() and sol.feasible


def test_per_request_reproduces_offline_slates():
    p, seen, attrs = instance(8)
    rev0, drama0, cov0, rev_max = targets(p, seen, attrs)
    cs = parse_constraints([f"revenue>={rev0 + 0.4 * (rev_max - rev0):.3f}", f"coverage>={cov0 + 6}"])
    sol = solve(p, attrs, cs, K, excluded=seen, repair=False)
    assert sol.feasible and sol.repaired_users == 0
    rr = PerRequestReranker(sol.weight, sol.offset, "sigmoid", K)
    logits = np.log(p / (1 - p))
    for u in range(len(p)):
        cand = np.flatnonzero(~seen[u])
        got = rr.rerank(cand, logits[u, cand])
        assert sorted(got.items.tolist()) == sorted(sol.items[u].tolist())
        np.testing.assert_allclose(got.relevance, p[u, got.items], rtol=1e-9)
        assert np.all(np.diff(got.utility) <= 0)


def test_per_request_input_checks():
    rr = PerRequestReranker(np.ones(3), np.array([0.0, -np.inf, 0.0]), "sigmoid", 2)
    r = rr.rerank(np.array([0, 1, 2]), np.array([0.1, 5.0, 0.3]))
    assert r.items.tolist() == [2, 0]  # item 1 is excluded whatever its score
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        rr.rerank(np.array([0, 7]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        rr.rerank(np.array([0, 1]), np.array([0.1]))


def test_to_relevance():
    s = torch.tensor([[0.0, 2.0, -2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(to_relevance(s, "sigmoid")[0], 1 / (1 + np.exp(-s[0].numpy())))
    np.testing.assert_allclose(to_relevance(s, "minmax"), [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="unknown relevance mode"):
        to_relevance(s, "softmax")
