"""Side features: MovieLens readers, generic CSV files, unknown values counted, strict encoding."""

from pathlib import Path

import numpy as np
import pytest

from ncf.data.features import (
    UNKNOWN,
    Field,
    build_table,
    encode_features,
    parse_feature_spec,
    read_feature_csv,
    read_item_titles,
    read_u_user,
    read_users_dat,
    side_features,
)
from ncf.data.readers import DataError


def _value(table, name, index):
    """The label of entity ``index``'s value in field ``name`` (a list for multi fields)."""
    k = table.names().index(name)
    f, col = table.fields[k], table.values[k]
    if f.kind == "multi":
        return [f.vocab[j] for j in np.flatnonzero(col[index])]
    return f.vocab[int(col[index])]


# --- Field ------------------------------------------------------------------------------


def test_bucket_field_cuts_at_edges_and_counts_bad_numbers():
    f = Field("age", "bucket", edges=[18, 25, 35])
    assert f.vocab == [UNKNOWN, "<18", "[18,25)", "[25,35)", ">=35"]
    assert [f.vocab[f.parse(v)[0]] for v in ("1", "18", "24.9", "25", "90")] == \
        ["<18", "[18,25)", "[18,25)", "[25,35)", ">=35"]
    assert f.parse("") == (0, "missing")
    assert f.parse("old") == (0, "unparseable")
    assert f.parse("nan") == (0, "unparseable")


def test_cat_and_multi_fields_parse_case_insensitively_and_flag_unknown_values():
    cat = Field("gender", "cat", ["F", "M"])
    assert cat.parse("f") == (1, "ok")
    assert cat.parse("X") == (0, "unparseable")
    multi = Field("genres", "multi", ["Comedy", "Drama"])
    assert multi.parse("Drama|comedy") == ([1, 2], "ok")
    assert multi.parse(["Drama", "Opera"]) == ([2], "unparseable")  # the known part is kept
    assert multi.parse(None) == ([0], "missing")


def test_field_round_trips_through_its_dict():
    for f in (Field("a", "bucket", edges=[1.5, 3]), Field("b", "cat", ["x", "y"]), Field("c", "multi", ["p"])):
        back = Field.from_dict(f.to_dict())
        assert (back.name, back.kind, back.vocab, back.edges) == (f.name, f.kind, f.vocab, f.edges)
    with pytest.raises(ValueError, match="kind"):
        Field("a", "float")
    with pytest.raises(ValueError, match="sorted"):
        Field("a", "bucket", edges=[3, 1])


def test_strict_encoding_names_the_valid_features_and_values():
    fields = [Field("age", "bucket", edges=[18, 25]), Field("gender", "cat", ["F", "M"]),
              Field("genres", "multi", ["Comedy", "Drama"])]
    row = encode_features(fields, {"AGE": "30", "genres": "Drama"})
    assert row[0].tolist() == [3] and row[1].tolist() == [0]  # gender not given: <unk>
    assert row[2].tolist() == [[0, 0, 1]]
    with pytest.raises(ValueError, match=r"unknown feature\(s\) 'job'.*gender: F, M"):
        encode_features(fields, {"job": "artist"})
    with pytest.raises(ValueError, match=r"feature 'gender': cannot use 'X'; valid: F, M"):
        encode_features(fields, {"gender": "X"})
    with pytest.raises(ValueError, match="a number"):
        encode_features(fields, {"age": "young"})


def test_feature_spec_parsing():
    assert parse_feature_spec("age=25, gender=F,occupation=college/grad student") == {
        "age": "25", "gender": "F", "occupation": "college/grad student"}
    for bad, msg in (("age", "NAME=VALUE"), ("=3", "NAME=VALUE"), ("a=1,a=2", "twice"), (" , ", "empty")):
        with pytest.raises(ValueError, match=msg):
            parse_feature_spec(bad)


# --- tables -----------------------------------------------------------------------------


def test_build_table_aligns_with_indexes_and_reports_what_is_unknown():
    records = {"10": {"g": "a", "n": "5"}, "11": {"g": None, "n": "x"}, "99": {"g": "b", "n": "1"}}
    t = build_table(records, [Field("g", "cat"), Field("n", "bucket", edges=[3])], [11, 10, 12], "mem")
    assert t.fields[0].vocab == [UNKNOWN, "a", "b"]  # vocabulary from every row, also those not in the data
    assert [_value(t, "g", i) for i in range(3)] == [UNKNOWN, "a", UNKNOWN]
    assert [_value(t, "n", i) for i in range(3)] == [UNKNOWN, ">=3", UNKNOWN]
    r = t.report
    assert (r["rows"], r["rows_in_file"], r["absent"], r["not_in_dataset"]) == (3, 3, 1, 1)
    assert r["fields"]["g"] == {"kind": "cat", "size": 3, "missing": 1, "unparseable": 0, "unknown": 2}
    assert r["fields"]["n"]["unparseable"] == 1 and r["fields"]["n"]["unknown"] == 2


# --- MovieLens --------------------------------------------------------------------------


def test_ml100k_features(ml100k, ml100k_dir):
    sf = side_features(ml100k)
    users, items = sf.users, sf.items
    assert users.names() == ["age", "gender", "occupation", "zip"] and items.names() == ["genres", "year"]
    assert len(users) == ml100k.n_users and len(items) == ml100k.n_items
    u1 = ml100k.train.user_map.index(1)  # 1|24|M|technician|85711
    assert [_value(users, n, u1) for n in ("age", "gender", "occupation", "zip")] == \
        ["[18,25)", "M", "technician", "8"]
    i1 = ml100k.train.item_map.index(1)  # Toy Story, 01-Jan-1995
    assert _value(items, "genres", i1) == ["Animation", "Children's", "Comedy"]
    assert _value(items, "year", i1) == ">=1995"
    # Canadian postal codes (a letter first) are counted as unparseable zip prefixes
    zips = [ln.split("|")[4] for ln in (ml100k_dir / "u.user").read_text().splitlines() if ln.strip()]
    assert users.report["fields"]["zip"]["unparseable"] == sum(not z[:1].isdigit() for z in zips) > 0
    assert items.report["fields"]["year"]["missing"] >= 1  # item 267 has no release date


def test_ncf_ml1m_features_follow_movielens_ids(ncf_ml1m):
    sf = side_features(ncf_ml1m)
    u = ncf_ml1m.train.user_map.index(1)  # users.dat: 1::F::1::10::48067
    assert [_value(sf.users, n, u) for n in ("gender", "age", "occupation", "zip")] == \
        ["F", "<18", "K-12 student", "4"]
    i = ncf_ml1m.train.item_map.index(1193)  # One Flew Over the Cuckoo's Nest (1975): Drama
    assert _value(sf.items, "genres", i) == ["Drama"] and _value(sf.items, "year", i) == "[1970,1980)"
    assert sf.items.report["absent"] == 0 and sf.items.report["not_in_dataset"] > 0  # movies nobody rated


def test_movielens_user_files_reject_malformed_lines(tmp_path):
    p = tmp_path / "u.user"
    p.write_text("1|24|M|technician|85711\n2|53|F\n")
    with pytest.raises(DataError, match=r"u.user:2: expected .*found 3"):
        read_u_user(p)
    p = tmp_path / "users.dat"
    p.write_text("x::F::1::10::48067\n")
    with pytest.raises(DataError, match=r"users.dat:1: id 'x' is not an integer"):
        read_users_dat(p)
    p.write_text("1::F::1::99::48067\n")  # occupation code out of range: kept, then unparseable
    t = build_table(read_users_dat(p), [Field("occupation", "cat", ["other", "artist"])], [1])
    assert t.report["fields"]["occupation"]["unparseable"] == 1


def test_item_titles_reader_is_unchanged(tmp_path):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n", encoding="latin-1")
    assert read_item_titles(tmp_path) == {1: ("Toy Story (1995)", ["Animation", "Children's", "Comedy"])}
    assert read_item_titles(tmp_path / "nothing") is None


# --- generic CSV files ------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name="f.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_kinds_are_inferred_or_declared(tmp_path):
    rows = ["id,age,city,tags,code:cat,score:num"]
    for i in range(30):
        rows.append(f"u{i},{18 + i},{'paris' if i % 2 else 'rome'},{'a|b' if i % 3 else 'c'},{i},{i % 4}")
    rows.append("u30,NA,?,,7,oops")
    records, fields = read_feature_csv(_write(tmp_path, "\n".join(rows) + "\n"))
    kinds = {f.name: f.kind for f in fields}
    assert kinds == {"age": "bucket", "city": "cat", "tags": "multi", "code": "cat", "score": "bucket"}
    assert records["u30"] == {"age": None, "city": None, "tags": None, "code": "7", "score": "oops"}
    t = build_table(records, fields, [f"u{i}" for i in range(31)] + ["u99"])
    f = t.report["fields"]
    assert f["age"]["missing"] == 1 and f["score"]["unparseable"] == 1 and f["tags"]["missing"] == 1
    assert f["city"]["unknown"] == 2  # u30 missing, u99 absent
    assert t.fields[2].vocab == [UNKNOWN, "a", "b", "c"]  # the vocabulary is filled in by build_table
    assert len(fields[0].edges) == 4  # quintiles


def test_csv_tab_separated_and_few_distinct_numbers_stay_categorical(tmp_path):
    records, fields = read_feature_csv(_write(tmp_path, "user\tgroup\n1\t0\n2\t1\n3\t1\n"))
    t = build_table(records, fields, [3, 1])
    assert t.fields[0].kind == "cat" and t.fields[0].vocab == [UNKNOWN, "0", "1"]
    assert t.values[0].tolist() == [2, 1]
    assert records["3"] == {"group": "1"}


@pytest.mark.parametrize("text,msg", [
    ("", "empty"),
    ("id\n1\n", "header"),
    ("id age\n1 3\n", "header"),
    ("id,age:float\n1,3\n", "bad column 'age:float'"),
    ("id,a,a\n1,2,3\n", "duplicate feature column"),
    ("id,a\n1,2\n2,3,4\n", r"f.csv:3: expected 2 fields .*found 3"),
    ("id,a\n1,2\n\n1,3\n", r"f.csv:4: duplicate id '1' \(first on line 2\)"),
    ("id,a\n,2\n", r"f.csv:2: empty id"),
    ("id,a:num\n1,x\n", "holds no numbers"),
])
def test_bad_csv_files_are_named_errors(tmp_path, text, msg):
    with pytest.raises(DataError, match=msg):
        read_feature_csv(_write(tmp_path, text))


def test_csv_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_feature_csv(tmp_path / "nope.csv")
    p = tmp_path / "latin.csv"
    p.write_bytes("id,city\n1,K\xf6ln\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_feature_csv(p)


def test_side_features_from_csv_files(toy_dataset, tmp_path):
    users = _write(tmp_path, "id,group\n" + "".join(f"{u},{'ab'[u % 2]}\n" for u in range(60)), "users.csv")
    items = _write(tmp_path, "id,kind\n" + "".join(f"{i},{'xy'[i // 20]}\n" for i in range(40)), "items.csv")
    sf = side_features(toy_dataset, users, items)
    raw_u = toy_dataset.train.user_map.raw_ids
    assert [_value(sf.users, "group", k) for k in range(3)] == ["ab"[int(r) % 2] for r in raw_u[:3]]
    raw_i = toy_dataset.train.item_map.raw_ids
    assert _value(sf.items, "kind", len(raw_i) - 1) == "xy"[int(raw_i[-1]) // 20]
    assert sf.report()["users"]["source"] == str(users)
    empty = side_features(toy_dataset)  # no files, no MovieLens folder: no fields at all
    assert empty.users.fields == [] and empty.items.fields == []
