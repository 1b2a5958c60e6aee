"""``ncf rerank`` end to end on a tiny trained run: JSON report, --save + per-request reranking,
and the errors a user can cause."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ncf.cli import app, main

runner = CliRunner()


def rerank(*args):
    return runner.invoke(app, ["rerank", *map(str, args)])


def report(run, attrs, *constraints, extra=()):
    args = [run, "--attributes", attrs, "--json", "-k", 5, *extra]
    for c in constraints:
        args += ["-c", c]
    res = rerank(*args)
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout), res


@pytest.fixture(scope="module")
def base(tiny_run, tiny_attributes):
    rep, _ = report(tiny_run, tiny_attributes)
    return rep


def test_unconstrained_report(base):
    assert set(base) >= {"revenue", "mean_relevance", "coverage", "multipliers", "constraints", "hr@5", "ndcg@5"}
    assert base["constraints"] == [] and base["multipliers"] == {}
    assert base["relevance"] == "sigmoid"
    assert base["attributes"]["items_without_attributes"] == 2  # the fixture leaves two out
    for key in ("revenue", "mean_relevance", "coverage", "hr@5", "ndcg@5"):
        assert base[key] == pytest.approx(base["unconstrained"][key])
    assert 0 <= base["ndcg@5"] <= base["hr@5"] <= 1 and 0 < base["mean_relevance"] < 1


def test_constraints_met_and_trade_relevance(tiny_run, tiny_attributes, base):
    want_rev = base["revenue"] * 1.15
    want_cov = base["coverage"] + 6
    rep, res = report(tiny_run, tiny_attributes, f"revenue>={want_rev:.4f}", "category:Drama<=0.2",
                      f"coverage>={want_cov}")
    assert res.exit_code == 0 and rep["feasible"]
    by = {c["expr"]: c for c in rep["constraints"]}
    assert all(c["satisfied"] for c in by.values())
    assert by[f"revenue>={want_rev:.4f}"]["achieved"] == pytest.approx(rep["revenue"]) and rep["revenue"] >= want_rev
    assert rep["coverage"] >= want_cov and by[f"coverage>={want_cov}"]["achieved"] == rep["coverage"]
    assert by["category:Drama<=0.2"]["achieved"] <= 0.2 + 1e-9
    assert rep["mean_relevance"] < base["mean_relevance"]  # constraints cost relevance
    assert by[f"revenue>={want_rev:.4f}"]["unconstrained"] == pytest.approx(base["revenue"])
    assert by[f"coverage>={want_cov}"]["unconstrained"] == base["coverage"]
    assert set(rep["multipliers"]) == set(by)


def test_save_then_serve_per_request(tiny_run, tiny_attributes, base, tmp_path):
    import shutil

    from ncf.recommend import Recommender
    from ncf.rerank.lagrangian import PerRequestReranker

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rep, res = report(run, tiny_attributes, f"revenue>={base['revenue'] * 1.1:.4f}", extra=["--save"])
    assert res.exit_code == 0 and (run / "rerank.json").exists()
    spec = json.loads((run / "rerank.json").read_text())
    assert spec["k"] == 5 and spec["attributes"]["sha256"] and len(spec["excluded_items"]) == 2
    rec = Recommender.from_run(run)
    plain = rec.recommend(101, 5)
    rec.reranker = PerRequestReranker.from_run(run)
    ranked = rec.recommend(101, 5, rerank=True)
    assert len(ranked.items) == 5 and not ranked.fallback
    assert all("utility" in it for it in ranked.items)
    seen = set(rec.item_map.raws(rec.seen_items(rec.user_map.index(101))))
    assert not seen & {it["item"] for it in ranked.items}
    excluded = set(rec.item_map.raws(spec["excluded_items"]))
    assert not excluded & {it["item"] for it in ranked.items}
    assert [it["item"] for it in plain.items] != [] and rec.recommend("nobody", 5, rerank=True).fallback


def test_rerank_json_errors(tiny_run, tmp_path):
    import shutil

    from ncf.checkpoint import CheckpointError
    from ncf.rerank.lagrangian import PerRequestReranker

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(CheckpointError, match="rerank.json: missing"):
        PerRequestReranker.from_run(run)
    (run / "rerank.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PerRequestReranker.from_run(run)
    (run / "rerank.json").write_text(json.dumps({"format": 1, "k": 5, "relevance": "sigmoid",
                                                 "item_weight": [1.0], "item_offset": [0.0]}))
    with pytest.raises(CheckpointError, match="holds 1 item weights, the run has"):
        PerRequestReranker.from_run(run)


@pytest.mark.parametrize("constraint, says", [
    ("revenue 3", "malformed constraint"),
    ("category:Horror<=0.1", "unknown category 'Horror'"),
    ("revenue>=1e6", "revenue>=1e6: unreachable"),
    ("coverage>=100000", "coverage>=100000: unreachable: at most"),
])
def test_bad_constraints_exit_2(tiny_run, tiny_attributes, capsys, constraint, says):
    with pytest.raises(SystemExit) as e:
        main(["rerank", str(tiny_run), "--attributes", str(tiny_attributes), "-c", constraint, "--no-eval"])
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_bad_attributes_and_options(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("item,price\n101,abc\n")
    for args, says in [
        (["--attributes", str(bad)], f"{bad}:2: column 'price'"),
        (["--attributes", str(tmp_path / "none.csv")], "no such attributes file"),
        (["--attributes", str(bad), "--relevance", "softmax"], "unknown relevance mode"),
        (["--attributes", str(bad), "--missing", "guess"], "--missing must be one of"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["rerank", str(tiny_run), *args, "--no-eval"])
        assert e.value.code == 2
        assert says in capsys.readouterr().err


def test_non_probability_models_refused_unless_minmax(tiny_run, tiny_attributes, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["loss"] = "bpr"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        main(["rerank", str(run), "--attributes", str(tiny_attributes), "--no-eval"])
    assert e.value.code == 2 and "not probabilities" in capsys.readouterr().err
    rep, res = report(run, tiny_attributes, extra=["--relevance", "minmax", "--no-eval"])
    assert rep["relevance"] == "minmax" and "hr@5" not in rep and 0 <= rep["mean_relevance"] <= 1


def test_jointly_unmet_exits_1_with_report(tiny_run, tmp_path):
    from ncf.checkpoint import load_run_maps

    _, items = load_run_maps(tiny_run)
    # only Comedy items earn money: no Comedy and revenue >= 1 are each reachable, not together
    lines = ["item,price,category"] + [f"{raw},{10 if j % 2 else 0.01},{'Comedy' if j % 2 else 'Drama'}"
                                       for j, raw in enumerate(items.raw_ids)]
    attrs = tmp_path / "a.csv"
    attrs.write_text("\n".join(lines) + "\n")
    rep, res = report(tiny_run, attrs, "category:Comedy<=0.0", "revenue>=1", extra=["--no-eval"])
    assert res.exit_code == 1 and not rep["feasible"]
    assert "could not be met together" in res.stderr
    assert [c["satisfied"] for c in rep["constraints"]].count(False) >= 1


def test_table_output_and_attributes_command(tiny_run, tiny_attributes, tmp_path):
    res = rerank(tiny_run, "--attributes", tiny_attributes, "-c", "coverage>=20", "--no-eval")
    assert res.exit_code == 0, res.output
    assert "coverage>=20" in res.stdout and "unconstrained" in res.stdout
    res = runner.invoke(app, ["rerank-attributes", str(tiny_run), "--out", str(tmp_path / "a.csv")])
    assert res.exit_code != 0 and "items.json" in str(res.exception)


def test_unconstrained_accuracy_matches_the_full_protocol(tiny_run, base):
    """The slates' HR/NDCG are the evaluator's full-ranking metrics when nothing is constrained."""
    from ncf.checkpoint import load_config, load_model
    from ncf.data.datasets import DataConfig, load_dataset
    from ncf.eval.evaluator import evaluate

    ds = load_dataset(DataConfig(**load_config(tiny_run)["data"]))
    full = evaluate(load_model(tiny_run), ds.test, "full", seen=ds.seen(include_valid=True), ks=(5,))
    assert base["hr@5"] == pytest.approx(full["hr@5"]) and base["ndcg@5"] == pytest.approx(full["ndcg@5"])
