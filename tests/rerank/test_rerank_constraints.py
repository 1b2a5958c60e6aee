"""Constraint parsing: accepted forms, and every malformed form rejected with a message that
says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from ncf.rerank.attributes import ItemAttributes
from ncf.rerank.constraints import ConstraintError, bind, parse_constraint, parse_constraints


@pytest.mark.parametrize("expr, kind, arg, op, target, canon", [
    ("revenue>=4.5", "revenue", "price", ">=", 4.5, "revenue>=4.5"),
    (" Revenue >= 4.5 ", "revenue", "price", ">=", 4.5, "revenue>=4.5"),
    ("revenue:margin<=2", "revenue", "margin", "<=", 2.0, "revenue:margin<=2"),
    ("category:Drama<=0.3", "category", "Drama", "<=", 0.3, "category:Drama<=0.3"),
    ("category:Children's>=0.05", "category", "Children's", ">=", 0.05, "category:Children's>=0.05"),
    ("category:Sci-Fi<=0.2", "category", "Sci-Fi", "<=", 0.2, "category:Sci-Fi<=0.2"),
    ("coverage>=500", "coverage", None, ">=", 500.0, "coverage>=500"),
    ("mean:price<=3", "mean", "price", "<=", 3.0, "mean:price<=3"),
])
def test_parses(expr, kind, arg, op, target, canon):
    c = parse_constraint(expr)
    assert (c.kind, c.arg, c.op, c.target, c.expr) == (kind, arg, op, target, canon)
    assert c.sign == (1.0 if op == ">=" else -1.0)


@pytest.mark.parametrize("expr, says", [
    ("revenue", "expected METRIC>=NUMBER"),
    ("", "malformed"),
    ("revenue>=abc", "'abc' is not a number"),
    ("revenue>=nan", "finite"),
    ("revenue>4.5", "operator '>'"),
    ("revenue=4.5", "operator '='"),
    ("profit>=3", "unknown metric 'profit'"),
    ("category<=0.3", "category needs a name"),
    ("mean>=2", "mean needs a name"),
    ("category:Drama<=1.3", "share must lie in [0, 1]"),
    ("coverage<=100", "only coverage>=N"),
    ("coverage>=10.5", "whole number"),
    ("coverage>=-1", "whole number"),
    ("coverage:x>=3", "takes no argument"),
])
def test_malformed(expr, says):
    with pytest.raises(ConstraintError) as e:
        parse_constraint(expr)
    assert says in str(e.value)
    if expr:
        assert repr(expr) in str(e.value) or says in str(e.value)


def test_duplicate_bounds_rejected_but_two_sided_allowed():
    assert len(parse_constraints(["revenue>=2", "revenue<=9"])) == 2
    with pytest.raises(ConstraintError, match="bound the same quantity"):
        parse_constraints(["revenue>=2", "revenue >= 3"])


def _attrs():
    n = 4
    return ItemAttributes(n, {"price": np.array([1.0, 2, 3, 4])}, ["Drama"], np.array([[1], [0], [1], [0]], bool),
                          np.ones(n, bool))


def test_bind_linear_forms():
    a = _attrs()
    rev = bind(parse_constraint("revenue>=1"), a)
    assert rev.uses_p and rev.per_slate and rev.v.tolist() == [1, 2, 3, 4]
    cat = bind(parse_constraint("category:Drama<=0.5"), a)
    assert not cat.uses_p and not cat.per_slate and cat.v.tolist() == [1, 0, 1, 0]
    assert bind(parse_constraint("coverage>=2"), a) is None


def test_bind_unknown_names():
    a = _attrs()
    with pytest.raises(ConstraintError, match="unknown category 'Comedy'.*Drama"):
        bind(parse_constraint("category:Comedy<=0.5"), a)
    with pytest.raises(ConstraintError, match="no numeric column 'margin'.*price"):
        bind(parse_constraint("revenue:margin>=1"), a)
