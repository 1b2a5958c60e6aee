"""ncf compare: trial selection, validation-only tuning, reversal marking, the report files."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ncf import compare as cmp
from ncf.data.datasets import DataConfig


def _res(s_hr, f_hr, s_nd=None, f_nd=None):
    return {"sampled": {"hr@10": s_hr, "ndcg@10": s_hr if s_nd is None else s_nd},
            "full": {"hr@10": f_hr, "ndcg@10": f_hr if f_nd is None else f_nd, "recall@10": f_hr},
            "train_seconds": 1.0, "params": {}}


def test_reversed_pairs_are_exactly_the_flipped_ones():
    results = {
        "a": _res(0.80, 0.10),
        "b": _res(0.70, 0.20),   # a > b sampled, a < b full: reversed
        "c": _res(0.60, 0.05),   # below a and b in both
        "d": _res(0.80, 0.30),   # ties a on sampled: no reversal with a; above b in both
    }
    assert cmp.reversed_pairs(results, "hr@10") == [("a", "b")]
    results["c"] = _res(0.60, 0.05, s_nd=0.9, f_nd=0.01)  # NDCG flips c against everyone
    assert set(cmp.reversed_pairs(results, "ndcg@10")) == {("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")}
    pairs = cmp.mark_reversals(results)
    assert results["a"]["reversed_with"] == {"hr@10": ["b"], "ndcg@10": ["b", "c"]}
    assert results["d"]["reversed_with"] == {"hr@10": [], "ndcg@10": ["c"]}
    md = cmp.results_markdown(results, pairs, "toy", None, 2)
    assert "| a vs b | HR@10 | a 0.8000 > b 0.7000 | a 0.1000 < b 0.2000 |" in md
    assert "None:" not in md


def test_no_reversal_is_said_so():
    results = {"a": _res(0.8, 0.2), "b": _res(0.7, 0.1)}
    md = cmp.results_markdown(results, cmp.mark_reversals(results), "toy", "ncf compare x", 1)
    assert "None: both protocols order every pair the same way" in md and "`ncf compare x`" in md


def test_the_table_says_how_many_candidates_the_sampled_protocol_ranks():
    """A 24-item catalogue has no 99 negatives to sample: the text says the real number."""
    results = {"a": _res(0.8, 0.2), "b": _res(0.7, 0.1)}
    md = cmp.results_markdown(results, cmp.mark_reversals(results), "toy", None, 1, candidates="1 + 16")
    assert "itself + 16 negatives" in md and "99" not in md
    assert "itself + 99 negatives" in cmp.results_markdown(results, cmp.mark_reversals(results), "toy", None, 1)


def test_choose_trials_respects_the_budget_and_keeps_the_default():
    grid = cmp.GRIDS["itemknn"]
    assert cmp.choose_trials(grid, 100) == grid
    picked = cmp.choose_trials(grid, 4, seed=0)
    assert len(picked) == 4 and picked[0] == grid[0] and all(p in grid for p in picked)
    assert len({json.dumps(p, sort_keys=True) for p in picked}) == 4
    assert picked == cmp.choose_trials(grid, 4, seed=0)
    assert cmp.choose_trials(grid, 1) == [grid[0]]
    with pytest.raises(ValueError, match="tune-budget"):
        cmp.choose_trials(grid, 0)


def test_trial_config_routes_keys():
    ease = cmp.trial_config("ease", {"l2": 100.0}, {"epochs": 3})
    assert ease.params == {"l2": 100.0} and ease.l2 == 0.0
    bpr = cmp.trial_config("bpr", {"l2": 1e-4, "factors": 16, "lr": 0.001}, {})
    assert (bpr.l2, bpr.factors, bpr.lr, bpr.loss, bpr.params) == (1e-4, 16, 0.001, "bpr", {})
    assert cmp.trial_config("gmf", {}, {}).loss == "bce"
    with pytest.raises(ValueError, match="grid key 'depth'"):
        cmp.trial_config("gmf", {"depth": 3}, {})


@pytest.mark.parametrize("text,match", [("pop,nope", "unknown model"), (" , ", "at least one"),
                                        ("pop,pop", "listed twice")])
def test_parse_models_errors(text, match):
    with pytest.raises(ValueError, match=match):
        cmp.parse_models(text)


def test_every_grid_builds_valid_configs():
    for name, grid in cmp.GRIDS.items():
        for trial in grid:
            cmp.trial_config(name, trial, {})


GRIDS = {"itemknn": [{"k": 5, "shrink": 0.0}, {"k": 20, "shrink": 5.0}, {"k": 2, "shrink": 50.0}],
         "ease": [{"l2": 1.0}, {"l2": 1e4}], "gmf": [{"factors": 4, "lr": 0.01}, {"factors": 8, "lr": 0.002}]}


def test_compare_end_to_end(toy_dataset, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    models = ["pop", "itemknn", "ease", "gmf"]
    kw = dict(tune_budget=2, epochs=2, patience=0, device="cpu", dataset=toy_dataset, progress=False,
              grids=GRIDS, base={"batch_size": 128}, sgd_budget=1)
    results = cmp.compare(DataConfig(source="toy"), models, out, **kw)
    on_disk = json.loads((out / "results.json").read_text())
    assert list(on_disk) == models
    for r in on_disk.values():
        assert set(r) == {"sampled", "full", "train_seconds", "params", "reversed_with"}
        assert set(r["sampled"]) == {"hr@10", "ndcg@10"} and set(r["full"]) == {"hr@10", "ndcg@10", "recall@10"}
        assert all(0.0 <= v <= 1.0 for p in ("sampled", "full") for v in r[p].values())
    assert on_disk["gmf"]["params"]["epochs"] == 2 and "best_epoch" in on_disk["gmf"]["params"]
    tuning = json.loads((out / "tuning.json").read_text())["models"]
    for name in models:
        trials = tuning[name]["trials"]
        assert 1 <= len(trials) <= 2
        scores = [t["valid"]["ndcg@10"] for t in trials]
        sel = tuning[name]["selected"]
        assert scores[sel] == max(scores)  # chosen on validation
        for t in trials:  # only the selected run keeps its weights
            assert ((tmp_path / t["run"]).resolve() / "model.safetensors").exists() == (t["trial"] == sel)
    assert len(tuning["gmf"]["trials"]) == 1 and len(tuning["ease"]["trials"]) == 2  # --sgd-budget 1
    assert on_disk["ease"]["params"] == {"l2": tuning["ease"]["trials"][tuning["ease"]["selected"]]["config"]["l2"]}
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in models)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the selected run is a normal run directory: it loads and scores like the report says
    from ncf.checkpoint import load_model
    from ncf.eval.evaluator import evaluate

    best = load_model(tuning["ease"]["trials"][tuning["ease"]["selected"]]["run"])
    assert np.isclose(evaluate(best, toy_dataset.test, "sampled")["hr@10"], results["ease"]["sampled"]["hr@10"])

    # a rerun reuses the finished trials instead of training again
    import ncf.train.run

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(ncf.train.run, "train", no_training)
    older = out / "runs" / "gmf" / "t0" / "config.json"  # a run from before a TrainConfig field existed
    cfg = json.loads(older.read_text())
    del cfg["train"]["monitor"]
    older.write_text(json.dumps(cfg))
    again = cmp.compare(DataConfig(source="toy"), models, out, **kw)
    assert again == results


def test_compare_needs_a_validation_holdout(toy_dataset, tmp_path):
    toy_dataset.valid = None
    with pytest.raises(ValueError, match="validation holdout"):
        cmp.compare(DataConfig(source="toy"), ["pop"], tmp_path, dataset=toy_dataset, progress=False)


def test_cli_compare(tmp_path):
    from ncf.cli import app, main

    rng = np.random.default_rng(5)
    lines = [f"{u}\t{i}\t4\t{t}" for u in range(1, 31)
             for t, i in enumerate(rng.choice(np.arange(1, 25), size=8, replace=False))]
    data = tmp_path / "r.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", "--dataset", str(data), "--models", "pop,ease", "--out", str(out),
                                   "--tune-budget", "2", "--quiet"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "results written" in res.output
    assert set(json.loads((out / "results.json").read_text())) == {"pop", "ease"}
    assert len(json.loads((out / "tuning.json").read_text())["models"]["ease"]["trials"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["compare", "--dataset", str(data), "--models", "pop,svd", "--out", str(out)])
    assert e.value.code == 2


def test_compare_never_writes_into_a_run(toy_dataset, tmp_path):
    """``ncf compare --out RUN`` wrote its results and runs/ into the run directory."""
    import ncf
    from ncf.errors import RunExistsError

    run = ncf.fit("pop", toy_dataset, progress=False).save(tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunExistsError, match="holds a run"):
        cmp.compare(DataConfig(source="toy"), ["pop"], run, dataset=toy_dataset, progress=False)
    assert sorted(p.name for p in run.iterdir()) == before
    # a comparison is recognised as one (its marker, before any result) and continued
    out = tmp_path / "c"
    cmp.compare(DataConfig(source="toy"), ["pop"], out, tune_budget=1, dataset=toy_dataset, progress=False)
    (out / "results.json").unlink()
    cmp.compare(DataConfig(source="toy"), ["pop"], out, tune_budget=1, dataset=toy_dataset, progress=False)
    assert (out / "results.json").exists()
