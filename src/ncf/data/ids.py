"""The one id rule: how a raw user or item id is read, wherever it comes from.

Files (``ncf.data.readers``), the CLI (``--user``, ``--item``), the Python API (``IdMap.get``)
and the HTTP service (path segments and JSON bodies) all go through these two functions, so
an id the reader accepts is an id the service can serve:

- surrounding whitespace is stripped (``str.strip``: ``" 196 "`` is ``"196"``); an id that is
  empty once stripped is malformed;
- an integer id is an ASCII integer literal (an optional sign, then ``0-9`` digits) within
  int64; ``"007"`` and ``"+7"`` are the integer 7. A column (or an id map) is integer when every
  one of its ids is; otherwise its ids are the stripped strings, kept exactly (``"1 x"``,
  ``"it'1"``, ``"ü196é"``, ``"a/b"``: no other character is refused or changed).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ncf.errors import ConfigError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INT = re.compile(r"[+-]?[0-9]+")


def parse_int_id(text: str) -> int | None:
    """``text`` (already stripped) as an integer id, or None when it is not one."""
    if not _INT.fullmatch(text):
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def canonical_id(value, integer: bool) -> int | str:
    """The raw id ``value`` (a str from a file, a CLI flag or a URL; or an int) under the rule
    above, for a map whose ids are integers (``integer``) or strings. Raises ``ValueError``
    saying why when ``value`` cannot be an id of such a map."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = int(value)
        if integer:
            if not INT64_MIN <= value <= INT64_MAX:
                raise ConfigError(f"{value} is outside int64")
            return value
        return str(value)
    text = str(value).strip()
    if not text:
        raise ConfigError("empty id")
    if not integer:
        return text
    number = parse_int_id(text)
    if number is None:
        raise ConfigError(f"{text[:64]!r} is not an integer (int64)")
    return number


def integer_literals(col: pd.Series) -> bool:
    """True when every value of ``col`` (stripped strings) is an integer literal under the rule
    (ASCII digits with an optional sign; int64 range not checked)."""
    return bool(col.str.fullmatch(_INT.pattern).all())


def canonical_ids(values: pd.Series) -> np.ndarray:
    """A column of id strings under the rule: stripped, then ``int64`` where every value is an
    integer id, else ``str``. (Vectorised form of :func:`canonical_id`; empty values are the
    caller's to report.)"""
    col = values.astype(str).str.strip()
    if not len(col):
        return np.empty(0, dtype=np.int64)
    if integer_literals(col):
        try:
            return col.astype("int64").to_numpy()
        except (ValueError, OverflowError):  # beyond int64: not integer ids
            pass
    return col.to_numpy(dtype=object).astype(str)
