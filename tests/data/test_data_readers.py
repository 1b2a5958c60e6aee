"""Readers: the real files in ../shared/data, files in other MovieLens layouts written at test
time (into tmp_path, never committed), and every way a user's file can be wrong."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncf.data import readers
from ncf.data.features import read_movies_dat, read_u_item
from ncf.data.readers import DataError, read_table

# --- Real files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def udata(ml100k_dir):
    return readers.read_ml100k(ml100k_dir / "u.data")


def test_ml100k_u_data(udata, ml100k_dir):
    assert hashlib.md5((ml100k_dir / "u.data").read_bytes()).hexdigest() == "6e47046882bad158b0efbb84cd5cb987"
    assert len(udata) == 100_000
    assert len(np.unique(udata.users)) == 943 and len(np.unique(udata.items)) == 1682
    assert udata.users.dtype == np.int64 and udata.users.min() == 1 and udata.items.max() == 1682
    assert set(np.unique(udata.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert udata.timestamps.dtype == np.int64 and udata.timestamps.min() > 8e8
    # first line of the file: 196	242	3	881250949
    assert (udata.users[0], udata.items[0], udata.ratings[0], udata.timestamps[0]) == (196, 242, 3.0, 881250949)
    assert udata.report.rows == 100_000 and udata.report.skipped == 0 and not udata.report.header


def test_ml100k_u_item_latin1(ml100k_dir):
    items = read_u_item(ml100k_dir / "u.item")
    assert len(items) == 1682
    assert items[1][0] == "Toy Story (1995)" and "Animation" in items[1][1]
    assert any("é" in title for title, _ in items.values())  # decoded as latin-1, not mangled


def test_ncf_train_two_columns(ncf_ml1m_dir):
    tr = readers.read_ncf_rating(ncf_ml1m_dir / "ml-1m.train.rating")
    assert len(tr) == 994_169
    assert tr.ratings is None and tr.timestamps is None  # only two columns
    assert tr.users.dtype == np.int64 and tr.users.min() == 0 and tr.users.max() == 6039
    assert tr.items.min() == 0 and tr.items.max() == 3705


def test_ncf_test_four_columns(ncf_ml1m_dir):
    te = readers.read_ncf_rating(ncf_ml1m_dir / "ml-1m.test.rating")
    assert len(te) == 6040 and np.array_equal(np.sort(te.users), np.arange(6040))
    assert te.ratings is not None and te.timestamps is not None
    assert te.ratings.min() >= 1 and te.ratings.max() <= 5


def test_ncf_negative_file(ncf_ml1m_dir):
    users, items, negs = readers.read_ncf_negative(ncf_ml1m_dir / "ml-1m.test.negative")
    assert len(users) == len(items) == 6040 and negs.shape == (6040, 99)
    assert (users[0], items[0]) == (0, 25)
    assert negs.min() >= 0 and negs.max() <= 3705
    # the published quirk: in 156 rows the positive is listed among its own negatives
    assert int((negs == items[:, None]).any(axis=1).sum()) == 156


def test_movies_dat_latin1(ncf_ml1m_dir):
    movies = read_movies_dat(ncf_ml1m_dir / "movies.dat")
    assert len(movies) == 3883
    assert movies[73][0] == "Misérables, Les (1995)"
    assert movies[1] == ("Toy Story (1995)", ["Animation", "Children's", "Comedy"])


def test_users_dat_with_generic_reader(ncf_ml1m_dir):
    # users.dat is ASCII; the generic reader handles its '::' layout (UserID::Gender::Age::...)
    r = read_table(ncf_ml1m_dir / "users.dat", 0, 2, sep="::")
    assert len(r) == 6040 and r.users[0] == 1 and set(np.unique(r.items).tolist()) == {1, 18, 25, 35, 45, 50, 56}


# --- Other MovieLens layouts, written at test time from u.data ------------------------------


def test_ratings_dat_double_colon(tmp_path, udata, ml100k_dir):
    lines = (ml100k_dir / "u.data").read_text().splitlines()
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join(ln.replace("\t", "::") for ln in lines) + "\n")
    r = readers.read_ml1m(path)
    for a, b in ((r.users, udata.users), (r.items, udata.items), (r.ratings, udata.ratings),
                 (r.timestamps, udata.timestamps)):
        assert np.array_equal(a, b)


def test_ratings_csv_header(tmp_path, udata):
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"userId": udata.users, "movieId": udata.items, "rating": udata.ratings / 2,
                  "timestamp": udata.timestamps}).to_csv(path, index=False)
    r = readers.read_ml_csv(path)
    assert r.report.header and len(r) == 100_000
    assert np.array_equal(r.users, udata.users) and np.allclose(r.ratings, udata.ratings / 2)
    # header detected without naming columns, too
    auto = read_table(path, 0, 1, 2, 3)
    assert auto.report.header and np.array_equal(auto.timestamps, udata.timestamps)


def test_parquet_named_and_positional(tmp_path, udata):
    pytest.importorskip("pyarrow")
    path = tmp_path / "r.parquet"
    frame = pd.DataFrame({"who": udata.users[:500], "what": udata.items[:500].astype(float),
                          "stars": udata.ratings[:500],
                          "when": pd.to_datetime(udata.timestamps[:500], unit="s")})
    frame.to_parquet(path)
    r = read_table(path, "who", "what", "stars", "when")
    assert r.items.dtype == np.int64 and np.array_equal(r.items, udata.items[:500])  # 242.0 -> 242
    assert np.array_equal(r.timestamps, udata.timestamps[:500])
    assert np.array_equal(read_table(path, 0, 1).users, udata.users[:500])
    frame.loc[3, "stars"] = np.nan
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"r\.parquet:4: field 'rating'"):
        read_table(path, "who", "what", "stars")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="bad.parquet: cannot read Parquet"):
        read_table(tmp_path / "bad.parquet")


# --- The generic reader: layouts it must accept -------------------------------------------


def _write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_positions_names_and_header_detection(tmp_path):
    p = _write(tmp_path, "a.csv", "user,item,stars,when\n1,10,4.5,100\n2,11,3,200\n")
    r = read_table(p, "user", "item", "stars", "when")
    assert r.users.tolist() == [1, 2] and r.ratings.tolist() == [4.5, 3.0] and r.timestamps.tolist() == [100, 200]
    assert read_table(p, "USER", "Item").users.tolist() == [1, 2]  # case-insensitive fallback
    det = read_table(p, 0, 1)  # header found from the columns asked for
    assert det.report.header and det.items.tolist() == [10, 11]
    no_header = _write(tmp_path, "b.csv", "1,10\n2,11\n")
    assert not read_table(no_header).report.header and len(read_table(no_header)) == 2


def test_blank_lines_trailing_columns_crlf_bom(tmp_path):
    p = _write(tmp_path, "c.tsv", "\ufeff1\t10\t5\t\r\n\r\n2\t11\t4\t\r\n   \r\n3\t12\t3\t\r\n")
    r = read_table(p, 0, 1, 2)
    assert r.users.tolist() == [1, 2, 3] and r.ratings.tolist() == [5.0, 4.0, 3.0]
    assert r.report.blank_lines == 2
    ragged = _write(tmp_path, "d.tsv", "1\t10\t5\n2\t11\t4\t\t\n\n3\t12\t3\n")
    assert read_table(ragged, 0, 1, 2).users.tolist() == [1, 2, 3]
    # an extra non-empty field is a malformed row (issue 20), not ignored
    extra = _write(tmp_path, "d2.tsv", "1\t10\t5\n2\t11\t4\t\t\n\n3\t12\t3\tcomment\n")
    with pytest.raises(DataError, match=r"d2.tsv:4: row has 4 fields"):
        read_table(extra, 0, 1, 2)
    r = read_table(extra, 0, 1, 2, on_bad_lines="skip")
    assert r.users.tolist() == [1, 2] and r.report.skipped == 1


def test_separators(tmp_path):
    assert read_table(_write(tmp_path, "e.txt", "1 10  5\n2  11 4\n"), 0, 1, 2).items.tolist() == [10, 11]
    assert read_table(_write(tmp_path, "f.txt", "1;10\n2;11\n")).items.tolist() == [10, 11]
    assert read_table(_write(tmp_path, "g.txt", "1|10\n2|11\n")).items.tolist() == [10, 11]
    tabs = _write(tmp_path, "h.txt", "1\t10,5\n2\t11,4\n")
    assert read_table(tabs, sep="tab").items.tolist() == ["10,5", "11,4"]
    assert read_table(tabs, sep="\\t").items.tolist() == ["10,5", "11,4"]
    quoted = _write(tmp_path, "i.csv", '1,"Heat, 1995",5\n2,"Up",4\n')
    assert read_table(quoted, 0, 1, 2).items.tolist() == ["Heat, 1995", "Up"]


def test_string_ids_and_dates(tmp_path):
    p = _write(tmp_path, "j.csv", "u,i,t\nalice,m1,2001-01-01T00:00:00\nbob,7,2001-01-02\n")
    r = read_table(p, "u", "i", time_col="t")
    assert r.users.tolist() == ["alice", "bob"] and r.items.tolist() == ["m1", "7"]
    assert r.timestamps.tolist() == [978307200, 978393600]


# --- The generic reader: what a user can get wrong ------------------------------------------


def test_malformed_rows_name_file_line_field(tmp_path):
    p = _write(tmp_path, "k.tsv", "1\t10\t5\n2\t11\tfive\n3\t12\t4\n4\t\t3\n")
    with pytest.raises(DataError, match=r"k\.tsv:2: field 'rating' \(column 2\): 'five' is not a number "
                                        r"\(2 malformed row\(s\); --on-bad-lines skip"):
        read_table(p, 0, 1, 2)
    r = read_table(p, 0, 1, 2, on_bad_lines="skip")
    assert r.users.tolist() == [1, 3] and r.report.skipped == 2 and r.report.skipped_lines == [2, 4]
    short = _write(tmp_path, "l.tsv", "1\t10\t5\n2\n")
    with pytest.raises(DataError, match=r"l\.tsv:2: field 'item' \(column 1\) is empty"):
        read_table(short, 0, 1, 2)
    frac = _write(tmp_path, "m.tsv", "1\t10\t100\n2\t11\t100.5\n")
    with pytest.raises(DataError, match=r"m\.tsv:2: field 'timestamp'.*'100.5' is not an integer"):
        read_table(frac, 0, 1, time_col=2)
    nan = _write(tmp_path, "n.tsv", "1\t10\t5\n2\t11\tnan\n")
    with pytest.raises(DataError, match=r"n\.tsv:2: field 'rating'.*'nan'"):
        read_table(nan, 0, 1, 2)
    allbad = _write(tmp_path, "o.tsv", "1\t10\tx\n2\t11\ty\n")
    with pytest.raises(DataError, match=r"o\.tsv: every row is malformed \(2 skipped"):
        read_table(allbad, 0, 1, 2, on_bad_lines="skip")


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "file is empty"),
        ("\n\n  \n", {}, "file is empty"),
        ("1,2\n", {"item_col": 3}, "item column 3 requested but rows have at most 2 field"),
        ("1;2\n3;4\n", {"sep": ","}, r"rows have at most 1 field\(s\) \(wrong --sep\?\)"),
        ("u,i\n1,2\n", {"user_col": "user", "item_col": "i"}, r"no column 'user' in the header \(columns: u, i\)"),
        ("1,2\n", {"user_col": "user", "item_col": 1, "header": False}, "named but the file has no header row"),
        ("1,2\n", {"user_col": 0, "item_col": 0}, "the user and item columns are the same column"),
        ("1,2\n", {"on_bad_lines": "ignore"}, "on_bad_lines must be one of"),
        ("12\n34\n", {}, "cannot detect the field separator; pass --sep"),
        ("1,2\n", {"min_rating": 4}, "--min-rating needs a rating column"),
    ],
)
def test_user_errors(tmp_path, text, kwargs, message):
    p = _write(tmp_path, "bad.csv", text)
    with pytest.raises(DataError, match=message) as e:
        read_table(p, **kwargs)
    assert "bad.csv" in str(e.value) or "on_bad_lines" in message


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        read_table(tmp_path)
    latin = _write(tmp_path, "p.csv", "é,1\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"p\.csv: not valid utf-8 text .* at byte 0"):
        read_table(latin)


def test_min_rating_counts_what_it_drops(tmp_path):
    p = _write(tmp_path, "q.csv", "1,10,5\n1,11,2\n2,10,3.5\n2,12,4\n")
    r = read_table(p, 0, 1, 2, min_rating=4)
    assert r.items.tolist() == [10, 12] and r.report.below_min_rating == 2 and r.report.rows == 2


def test_ncf_format_errors(tmp_path):
    one = _write(tmp_path, "x.train.rating", "1\n2\n")
    with pytest.raises(DataError, match=r"x\.train\.rating:1: expected 2 to 4 tab-separated fields"):
        readers.read_ncf_rating(one)
    three = _write(tmp_path, "y.train.rating", "0\t1\t5\n1\t0\t3\n")
    r = readers.read_ncf_rating(three)
    assert r.ratings.tolist() == [5.0, 3.0] and r.timestamps is None
    head = _write(tmp_path, "a.test.negative", "(0,1)\t2\t3\n0,1\t2\t3\n")
    with pytest.raises(DataError, match=r"a\.test\.negative:2: first field should be '\(user,item\)'"):
        readers.read_ncf_negative(head)
    neg = _write(tmp_path, "b.test.negative", "(0,1)\t2\t3\n\n(1,2)\t4\tfive\n")
    with pytest.raises(DataError, match=r"b\.test\.negative:3: field 3 \(a negative item\) 'five'"):
        readers.read_ncf_negative(neg)
    ragged = _write(tmp_path, "c.test.negative", "(0,1)\t2\t3\t\n(1,2)\t4\n(2,3)\t\t5\t\n")
    u, i, n = readers.read_ncf_negative(ragged)
    assert u.tolist() == [0, 1, 2] and i.tolist() == [1, 2, 3] and n.tolist() == [[2, 3], [4, -1], [-1, 5]]


# --- Both passes (typed fast parse, exact line-by-line check) give the same data -----------

_ids = st.integers(min_value=0, max_value=60)
_rows = st.lists(st.tuples(_ids, _ids, st.integers(1, 10), st.integers(0, 10**10)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows, bad_at=st.integers(min_value=0, max_value=40), sep=st.sampled_from(["\t", ",", "::"]))
def test_fast_and_exact_passes_agree(tmp_path, rows, bad_at, sep):
    lines = [sep.join(str(v) for v in (u, i, r / 2, t)) for u, i, r, t in rows]
    clean = tmp_path / "clean.txt"
    clean.write_text("\n".join(lines) + "\n")
    bad_at = min(bad_at, len(lines))
    dirty = tmp_path / "dirty.txt"
    dirty.write_text("\n".join([*lines[:bad_at], sep.join(["9", "9", "oops", "1"]), *lines[bad_at:]]) + "\n")
    a = read_table(clean, 0, 1, 2, 3, sep=sep)  # parsed by the typed pass
    b = read_table(dirty, 0, 1, 2, 3, sep=sep, on_bad_lines="skip")  # checked line by line
    assert b.report.skipped == 1 and b.report.skipped_lines == [bad_at + 1]
    for x, y in ((a.users, b.users), (a.items, b.items), (a.ratings, b.ratings), (a.timestamps, b.timestamps)):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert a.users.tolist() == [u for u, *_ in rows] and a.timestamps.tolist() == [t for *_, t in rows]


# --- Files that were read silently wrong, or refused with an unclear message -------------------


def test_a_file_holding_only_a_header_row_is_refused(tmp_path):
    """Not one interaction of user "user" and item "item"."""
    for text in ("user,item\n", "userId,movieId,rating,timestamp\n\n"):
        with pytest.raises(DataError, match=r"only a header row .* no interactions"):
            read_table(_write(tmp_path, "h.csv", text))
    assert read_table(_write(tmp_path, "one.csv", "1,2\n")).users.tolist() == [1]  # one data row stays one


def test_json_lines_are_read_as_objects(tmp_path):
    rows = [{"user": u, "item": f"p{i}", "rating": 1 + (u + i) % 5, "timestamp": 1000 + 10 * u + i}
            for u in range(3) for i in range(4)]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    r = read_table(_write(tmp_path, "events.jsonl", text))
    assert r.users.tolist() == [x["user"] for x in rows] and r.items.tolist() == [x["item"] for x in rows]
    assert r.timestamps.tolist() == [x["timestamp"] for x in rows]
    assert r.ratings.tolist() == [x["rating"] for x in rows]
    chunks = list(readers.iter_table(tmp_path / "events.jsonl"))  # the chunked reader (ncf.data.rankload) too
    assert [x for c in chunks for x in c.items.tolist()] == r.items.tolist()
    arr = read_table(_write(tmp_path, "events.json", json.dumps(rows)))  # a JSON array of objects
    assert arr.items.tolist() == r.items.tolist()
    with pytest.raises(DataError, match=r"events.jsonl: line 2: not valid JSON"):
        read_table(_write(tmp_path, "events.jsonl", '{"user": 1, "item": 2}\n{"user": 1, "item"\n'))
    with pytest.raises(DataError, match=r"events.jsonl:2: field 'item' .* is empty"):
        read_table(_write(tmp_path, "events.jsonl", '{"user": 1, "item": 2}\n{"user": 1}\n'))


@pytest.mark.parametrize("marker", ["NaN", "null", "NA", "None"])
def test_a_missing_id_is_refused_with_its_line(tmp_path, marker):
    """Not an item called "NaN" that turns every item id into a string."""
    path = _write(tmp_path, "r.csv", f"user,item\n1,2\n1,{marker}\n2,3\n")
    with pytest.raises(DataError, match=rf"r.csv:3: field 'item' \(column 1\) is '{marker}', a missing item id"):
        read_table(path)
    r = read_table(path, on_bad_lines="skip")
    assert r.items.tolist() == [2, 3] and r.report.skipped_lines == [3]


def test_a_time_column_of_ratings_is_warned_about(tmp_path):
    path = _write(tmp_path, "r.csv", "user,item,rating\n" + "".join(f"{u},{i},{1 + (u * i) % 5}\n"
                                                                      for u in range(5) for i in range(6)))
    r = read_table(path, 0, 1, time_col="rating")
    assert any("look like ratings, not times" in w and "--rating-col" in w for w in r.report.warnings)
    real = _write(tmp_path, "t.csv", "".join(f"{u},{i},{10 ** 9 + u * 7 + i}\n" for u in range(5) for i in range(6)))
    assert read_table(real, 0, 1, time_col=2).report.warnings == []
    order = _write(tmp_path, "o.csv", "".join(f"{u},{i},{i}\n" for u in range(5) for i in range(6)))  # 0..5 a user
    assert read_table(order, 0, 1, time_col=2).report.warnings == []


def test_two_header_columns_of_the_asked_name_are_refused(tmp_path):
    path = _write(tmp_path, "r.csv", "user,item,item\n1,2,3\n2,3,4\n")
    with pytest.raises(DataError, match=r"2 columns are named 'item' \(positions 1, 2\)"):
        read_table(path, "user", "item")


@pytest.mark.parametrize("sep", [";", "\t"])
def test_quoted_fields_hold_the_separator_for_semicolon_and_tab(tmp_path, sep):
    """Spreadsheet exports quote a field holding the separator, whichever it is."""
    text = sep.join(["user", "item", "rating"]) + "\n" + f'1{sep}"a{sep}b"{sep}3\n2{sep}c{sep}4\n1{sep}c{sep}5\n'
    r = read_table(_write(tmp_path, "r.txt", text), rating_col=2)
    assert r.items.tolist() == [f"a{sep}b", "c", "c"] and r.ratings.tolist() == [3, 4, 5]
    # a quote that does not close on its line would swallow the next lines: refused, naming the line
    unclosed = f'user{sep}item\n1{sep}x\n1{sep}"a{sep}3\n2{sep}b"{sep}4\n2{sep}c\n'
    with pytest.raises(DataError, match=r"r.txt:3: a field opens a quote .* does not close on its line"):
        read_table(_write(tmp_path, "r.txt", unclosed))
    literal = f'1{sep}12" vinyl\n2{sep}c\n'  # a quote inside a field is a character
    assert read_table(_write(tmp_path, "r.txt", literal)).items.tolist() == ['12" vinyl', "c"]


def test_header_names_are_used_when_no_column_is_asked_for(tmp_path):
    """The first column is a timestamp: with no --user-col, the header's names decide."""
    path = _write(tmp_path, "r.csv", "timestamp,user_id,item_id,rating\n"
                  + "".join(f"{1000 + 10 * u + i},{u},{100 + i},{1 + i % 5}\n" for u in range(3) for i in range(4)))
    r = read_table(path)
    assert sorted(set(r.users.tolist())) == [0, 1, 2] and sorted(set(r.items.tolist())) == [100, 101, 102, 103]
    assert r.timestamps is not None and r.ratings is not None
    assert r.report.to_dict()["columns"]["user"] == "'user_id' (column 1)"
    ml = _write(tmp_path, "m.csv", "userId,movieId,rating,timestamp\n1,10,4.5,100\n1,11,3,101\n")
    assert read_table(ml).items.tolist() == [10, 11]
    # a column asked for: the rest as before (user 0 / item 1 unless given, no time unless given)
    r = read_table(path, "user_id", "item_id")
    assert r.timestamps is None and r.ratings is None
    anon = _write(tmp_path, "a.csv", "a,b\n1,2\n3,4\n")  # nothing recognised: the first two columns
    assert read_table(anon).users.tolist() == [1, 3]


def test_unnamed_trailing_header_columns_never_make_a_row_malformed(tmp_path):
    """A spreadsheet export: ``userId,movieId,rating,timestamp,,,,`` with stray values in a few rows."""
    text = "userId,movieId,rating,timestamp,,,,\n1,10,4,100,,,,\n1,11,3,101,x,,,\n2,10,5,102,,,y,\n2,12,1,103,,,,\n"
    r = read_table(_write(tmp_path, "r.csv", text))
    assert r.users.tolist() == [1, 1, 2, 2] and r.timestamps.tolist() == [100, 101, 102, 103]
    assert r.report.skipped == 0
