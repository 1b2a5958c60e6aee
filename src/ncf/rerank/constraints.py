"""Business constraints over all users' slates: parsing and their linear form.

Grammar: ``METRIC OP NUMBER`` with OP one of ``>=``, ``<=``:

============================  ===========================================================
``revenue>=4.5``              mean expected revenue per slate: sum over the slate of
                              p(user, item) * price(item), averaged over users
``revenue:margin>=0.8``       the same with another numeric column instead of ``price``
``mean:price<=3``             mean value of a numeric column over all recommended slots
``category:Drama<=0.3``       share of recommended slots whose item is in category Drama
``coverage>=500``             distinct items recommended across all users (``>=`` only)
============================  ===========================================================

Every constraint except coverage is linear in the slot choice x(u, i) in {0, 1}:
``sum_{u,i} a(u, i) x(u, i) / norm  OP  target`` with ``a = p * v`` (revenue) or ``a = v``
(mean, category) for an item vector ``v``, and ``norm`` the number of users (per-slate
metrics) or of slots (shares and means). :class:`Linear` holds that form.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ncf.errors import ConfigError
from ncf.rerank.attributes import ItemAttributes

OPS = (">=", "<=")
KINDS = ("revenue", "mean", "category", "coverage")
_EXPR = re.compile(r"^\s*([A-Za-z_][\w\-]*)(?::\s*(.+?))?\s*(>=|<=|=>|=<|==|=|>|<)\s*(\S.*?)\s*$")
PRICE = "price"


class ConstraintError(ConfigError):
    """A constraint that cannot be parsed, or that no choice of slates can meet."""


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint: ``kind`` (revenue | mean | category | coverage), ``arg`` (a column
    or category name; None for coverage), ``op`` (>= or <=), ``target``."""

    expr: str
    kind: str
    arg: str | None
    op: str
    target: float

    @property
    def sign(self) -> float:
        """+1 for >=, -1 for <=: ``sign * (achieved - target) >= 0`` when satisfied."""
        return 1.0 if self.op == ">=" else -1.0

    def satisfied(self, achieved: float, rtol: float = 1e-9) -> bool:
        return self.sign * (achieved - self.target) >= -rtol * max(1.0, abs(self.target))

    def describe(self) -> str:
        return {
            "revenue": f"mean expected revenue per slate (p x {self.arg})",
            "mean": f"mean {self.arg} per recommended slot",
            "category": f"share of slots in category {self.arg}",
            "coverage": "number of distinct items recommended",
        }[self.kind]

    def to_dict(self) -> dict:
        return {"expr": self.expr, "kind": self.kind, "arg": self.arg, "op": self.op, "target": self.target}

    @classmethod
    def from_dict(cls, d: dict) -> Constraint:
        return cls(d["expr"], d["kind"], d.get("arg"), d["op"], float(d["target"]))


def parse_constraint(expr: str) -> Constraint:
    """Parse ``expr`` (see the module docstring); errors say what is wrong and what is accepted."""
    m = _EXPR.match(expr or "")
    if not m:
        raise ConstraintError(
            f"malformed constraint {expr!r}: expected METRIC>=NUMBER or METRIC<=NUMBER, e.g. "
            "revenue>=4.5, category:Drama<=0.3, coverage>=500, mean:price<=3, revenue:margin>=0.8")
    name, arg, op, num = m.group(1).lower(), m.group(2), m.group(3), m.group(4)
    if op not in OPS:
        raise ConstraintError(f"constraint {expr!r}: operator {op!r} is not supported (use >= or <=)")
    try:
        target = float(num)
    except ValueError:
        raise ConstraintError(f"constraint {expr!r}: {num!r} is not a number") from None
    if not math.isfinite(target):
        raise ConstraintError(f"constraint {expr!r}: the target must be a finite number")
    if name not in KINDS:
        raise ConstraintError(f"constraint {expr!r}: unknown metric {name!r} (known: {', '.join(KINDS)})")
    if name == "revenue":
        arg = arg or PRICE
    elif name in ("mean", "category") and not arg:
        raise ConstraintError(f"constraint {expr!r}: {name} needs a name, e.g. {name}:"
                              + ("price" if name == "mean" else "Drama"))
    elif name == "coverage":
        if arg:
            raise ConstraintError(f"constraint {expr!r}: coverage takes no argument")
        if op != ">=":
            raise ConstraintError(f"constraint {expr!r}: only coverage>=N is supported (a minimum of distinct items)")
        if target < 0 or not float(target).is_integer():
            raise ConstraintError(f"constraint {expr!r}: coverage needs a whole number of items >= 0")
    if name == "category" and not 0.0 <= target <= 1.0:
        raise ConstraintError(f"constraint {expr!r}: a category share must lie in [0, 1], got {target}")
    canon = f"{name}{':' + arg if arg and not (name == 'revenue' and arg == PRICE) else ''}{op}{num.strip()}"
    return Constraint(canon, name, arg, op, target)


def parse_constraints(exprs: list[str]) -> list[Constraint]:
    out = [parse_constraint(e) for e in exprs]
    seen: dict[str, str] = {}
    for c in out:
        key = f"{c.kind}:{c.arg}{c.op}"
        if key in seen:
            raise ConstraintError(f"constraints {seen[key]!r} and {c.expr!r} bound the same quantity the same way")
        seen[key] = c.expr
    return out


@dataclass
class Linear:
    """``sum a(u,i) x(u,i) / norm`` with ``a(u,i) = (p(u,i) if uses_p else 1) * v[i]``."""

    constraint: Constraint
    v: np.ndarray  # float64 [n_items]
    uses_p: bool
    per_slate: bool  # norm = number of users (True) or number of slots (False)


def bind(constraint: Constraint, attrs: ItemAttributes) -> Linear | None:
    """The linear form of ``constraint`` over ``attrs`` (None for coverage, which is not linear)."""
    try:
        if constraint.kind == "coverage":
            return None
        if constraint.kind == "category":
            return Linear(constraint, attrs.category(constraint.arg), False, False)
        v = attrs.column(constraint.arg)
    except ValueError as e:
        raise ConstraintError(f"constraint {constraint.expr!r}: {e}") from None
    if constraint.kind == "revenue":
        return Linear(constraint, v, True, True)
    return Linear(constraint, v, False, False)
