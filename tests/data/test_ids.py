"""The one id rule (``ncf.data.ids``): the column form the readers use agrees with the
per-id form the CLI, ``IdMap.get`` and the HTTP service use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ncf.data.ids import canonical_id, canonical_ids
from ncf.data.interactions import IdMap

COLUMNS = [
    [" 1", "007", "+8", "-3", "9223372036854775807", "-9223372036854775808"],  # integers
    ["1", "9223372036854775808"],  # beyond int64: strings
    ["1", "1_000"], ["1", "٣"], ["1", "７"], ["1", "1e3"], ["1", "0x10"],  # not ASCII integer literals
    [" 1 x ", "it'1", "ü196é\t", "a/b", "<script>", "50%"],  # strings, kept exactly once stripped
]


@pytest.mark.parametrize("values", COLUMNS)
def test_column_and_single_ids_agree(values):
    col = canonical_ids(pd.Series(values, dtype=object))
    integer = col.dtype.kind == "i"
    assert integer == all(_ok(canonical_id, v, True) for v in values)
    assert list(col) == [canonical_id(v, integer) for v in values]
    m = IdMap(col)
    for n, v in enumerate(values):  # every spelling the rule maps to an id finds it
        assert m.get(v) == n and m.get(f"  {v} ") == n


def _ok(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except ValueError:
        return False


def test_integer_columns_are_int64():
    assert canonical_ids(pd.Series(COLUMNS[0], dtype=object)).dtype == np.int64
    for values in COLUMNS[1:]:
        assert canonical_ids(pd.Series(values, dtype=object)).dtype.kind == "U"
    assert canonical_ids(pd.Series([], dtype=object)).dtype == np.int64


def test_empty_and_padded():
    with pytest.raises(ValueError, match="empty"):
        canonical_id("  ", integer=False)
    assert canonical_id(12, integer=False) == "12" and canonical_id(" 12 ", integer=True) == 12
    with pytest.raises(ValueError, match="int64"):
        canonical_id(2**63, integer=True)
