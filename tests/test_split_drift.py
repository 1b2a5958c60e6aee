"""benchmarks/split_drift.py: the release-year and popularity profile of validation and test items."""

import importlib.util
from pathlib import Path

import numpy as np

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "split_drift.py"
_spec = importlib.util.spec_from_file_location("split_drift", _path)
split_drift = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(split_drift)


def test_release_years_reads_the_title_year_and_leaves_nan_where_there_is_none():
    y = split_drift.release_years(["Toy Story (1995)", "Heat (1995) ", "No year", None, "City (1931) (2000)"])
    assert y[0] == 1995 and y[1] == 1995 and np.isnan(y[2]) and np.isnan(y[3]) and y[4] == 2000


def test_ml100k_profile(ml100k_dir, capsys):
    """On ml-100k (timestamps: validation is the second-latest item) held-out items are newer and
    less popular than training interactions; every share is a share of that set's rows."""
    out = split_drift.main(["--dataset", "ml-100k", "--json"])
    sets = out["sets"]
    assert out["timestamps"] is True and out["recent_from"] == 1997
    assert sets["valid items"]["rows"] == sets["test items"]["rows"] == 943
    for s in sets.values():
        assert 0 < s["recent_share"] < 1
    assert sets["test items"]["recent_share"] > 1.5 * sets["training"]["recent_share"]
    assert sets["test items"]["mean_log_popularity"] < sets["training"]["mean_log_popularity"]
    assert '"valid items"' in capsys.readouterr().out
