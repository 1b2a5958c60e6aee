"""``ncf data info``: counts on the real data, reports of skipped rows, one-line errors."""

from __future__ import annotations

import json

import pytest

from ncf.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_info_ml100k_json(ml100k_dir, capsys):
    code, out, _ = run(["data", "info", "ml-100k", "--json"], capsys)
    info = json.loads(out)
    assert code == 0
    assert (info["n_users"], info["n_items"], info["n_interactions"]) == (943, 1682, 100_000)
    assert info["density"] == pytest.approx(100_000 / (943 * 1682))
    assert info["split"] == {"train": 98_114, "valid": 943, "test": 943, "test_candidates": 99}
    assert info["skipped_rows"] == 0 and info["timestamps"] is True and "split_sizes" not in info


def test_info_ncf_ml1m_json(ncf_ml1m_dir, capsys):
    code, out, _ = run(["data", "info", "ncf-ml-1m", "--json"], capsys)
    info = json.loads(out)
    assert code == 0
    assert (info["n_users"], info["n_items"], info["n_interactions"]) == (6040, 3706, 1_000_209)
    assert info["split_sizes"] == {"train": 994_169, "test": 6040, "candidate_lists": 6040}
    assert info["split"]["train"] + info["split"]["valid"] == 994_169 and info["split"]["test"] == 6040
    assert info["report"]["candidates"]["rows_with_positive_in_negatives"] == 156


def test_info_table_reports_skipped_rows(tmp_path, capsys):
    p = tmp_path / "plays.tsv"
    p.write_text("".join(f"{u}\t{i}\t{i * 10 + u}\n" for u in range(5) for i in range(4)) + "9\t\t1\n\n7\t1\tnoon\n")
    code, _, err = run(["data", "info", str(p), "--time-col", "2"], capsys)
    assert code == 2 and err == f"error: {p}:21: field 'item' (column 1) is empty (2 malformed row(s); " \
                                "--on-bad-lines skip skips and counts them)\n"
    code, out, _ = run(["data", "info", str(p), "--time-col", "2", "--on-bad-lines", "skip"], capsys)
    assert code == 0 and "malformed rows skipped" in out and "2 (lines 21, 23)" in out
    assert "n_interactions" in out and "20" in out
    code, out, _ = run(["data", "info", str(p), "--time-col", "2", "--on-bad-lines", "skip", "--json"], capsys)
    info = json.loads(out)
    assert info["skipped_rows"] == 2 and info["skipped_lines"] == [21, 23] and info["blank_lines"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-source"], "error: unknown source 'no-such-source': not a dataset name"),
        (["ml-100k", "--on-bad-lines", "drop"], "error: --on-bad-lines must be 'error' or 'skip', not 'drop'"),
        (["ml-100k", "--user-col", "0"], "error: --user-col: column options apply to a file path"),
        (["ncf-ml-1m", "--min-rating", "4"], "error: --min-rating: 'ncf-ml-1m' is pre-split"),
    ],
)
def test_bad_flags_give_one_line(args, message, ml100k_dir, capsys):
    code, out, err = run(["data", "info", *args], capsys)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1 and out == ""


def test_bad_column_flags_on_a_file(tmp_path, capsys):
    p = tmp_path / "r.csv"
    p.write_text("user,item\n1,2\n2,3\n")
    code, _, err = run(["data", "info", str(p), "--user-col", "uid"], capsys)
    assert code == 2 and err == f"error: {p}: no column 'uid' in the header (columns: user, item)\n"
    code, _, err = run(["data", "info", str(p), "--user-col", "0", "--item-col", "5"], capsys)
    assert code == 2 and "item column 5 requested but rows have at most 2 field(s)" in err
    code, _, err = run(["data", "info", str(p), "--min-rating", "high"], capsys)
    assert code == 2 and "Invalid value for '--min-rating'" in err  # typer's own usage error



def test_info_counts_the_candidates_a_small_catalogue_has(tmp_path, capsys):
    """8 items, each user saw 4: 4 negatives to sample for a test item, not the 99 asked for."""
    p = tmp_path / "plays.csv"
    p.write_text("".join(f"{u},{(u + j) % 8},{100 + j}\n" for u in range(10) for j in range(4)))
    code, out, _ = run(["data", "info", str(p), "--time-col", "2", "--json"], capsys)
    assert code == 0 and json.loads(out)["split"]["test_candidates"] == 4
