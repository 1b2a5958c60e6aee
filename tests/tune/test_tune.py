"""``ncf tune`` on the planted toy dataset: outputs, resume from the SQLite study, pruning,
search spaces."""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from ncf.checkpoint import load_model  # noqa: E402
from ncf.data.datasets import DataConfig  # noqa: E402
from ncf.tune import Tuner, space, tune  # noqa: E402

DCFG = DataConfig(source="toy")


def _rows(out):
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_tune_writes_summary_best_trials_and_plot(toy_dataset, tmp_path):
    out = tmp_path / "t"
    s = tune(DCFG, out, 12, ["ease", "itemknn", "ensemble"], dataset=toy_dataset, progress=False, threads=1)
    for f in ("summary.json", "trials.csv", "tune.png", "study.sqlite3", "best/model.safetensors"):
        assert (out / f).exists(), f
    saved = json.loads((out / "summary.json").read_text())
    assert saved["model"] == s["model"] and set(saved["valid"]) == {"sampled", "full"}
    assert set(saved["test"]) == {"sampled", "full"} and "hr@10" in saved["test"]["full"]
    # the choice is the best validation score among every model's best trial
    scores = [r["valid_score"] for r in s["per_model"].values() if r["valid_score"] is not None]
    assert s["per_model"][s["model"]]["valid_score"] == max(scores)
    assert "test" not in s["per_model"][s["model"]]  # test is read for DIR/best alone
    rows = _rows(out)
    assert "ease" in {r["model"] for r in rows}  # the others as the (loaded) machine's time allows
    assert rows[0]["model"] == "ease" and json.loads(rows[0]["params"]) == {"l2": 500.0}  # defaults first
    model = load_model(out / "best")
    assert model.name == s["model"]


def test_resume_continues_the_study_and_charges_spent_time(toy_dataset, tmp_path):
    out = tmp_path / "t"
    tune(DCFG, out, 3, ["ease"], dataset=toy_dataset, progress=False, threads=1)
    first = len(_rows(out))
    spent = float(_rows(out)[-1]["elapsed"])
    tuner = Tuner(DCFG, out, spent + 60, ["ease"], dataset=toy_dataset, progress=False, threads=1)
    assert tuner.spent() == pytest.approx(spent, abs=0.5)  # charged to the budget
    assert len(tuner.studies["ease"].trials) == first  # loaded from study.sqlite3
    tuner.run_trial("ease", deadline=1e18)
    tuner.run_trial("ease", deadline=1e18)
    again = Tuner(DCFG, out, spent + 60, ["ease"], dataset=toy_dataset, progress=False, threads=1)
    again.run_trial("ease", deadline=1e18)
    params = [t.params["l2"] for t in again.studies["ease"].trials]
    assert len(params) == first + 3
    assert len(set(params)) == len(params)  # a resumed sampler does not draw the first session's points again
    with pytest.raises(ValueError, match="another dataset or setting"):
        Tuner(DCFG, out, 6, ["ease"], protocol="full", dataset=toy_dataset, progress=False)


def test_resume_refuses_runs_of_another_split(tmp_path):
    """A tune directory whose runs were trained on another split of the source (an older ncf's
    tie rule, say) is not resumed: its trials and the new ones would not be comparable."""
    from ncf.checkpoint import load_train_matrix, save_train_matrix
    from ncf.errors import ConfigError

    dcfg = _dated_ratings(tmp_path)
    tune(dcfg, tmp_path / "t", 3, ["ease"], progress=False, threads=1, refit="no")
    run = tmp_path / "t" / "runs" / "ease" / "t000"
    m = load_train_matrix(run).tolil()
    m[0, int(np.flatnonzero(m.toarray()[0] == 0)[0])] = 1
    save_train_matrix(run, m.tocsr())
    with pytest.raises(ConfigError, match="its runs were trained on another split"):
        tune(dcfg, tmp_path / "t", 3, ["ease"], progress=False, threads=1, refit="no")


def test_sgd_trials_are_pruned_from_their_epochs(toy_dataset, tmp_path):
    out = tmp_path / "t"
    tuner = Tuner(DCFG, out, 25, ["ease", "mf"], dataset=toy_dataset, progress=False, epochs=4, threads=1)
    # a pruner that stops every trial whose validation is below 1 after its first epoch
    tuner.studies["mf"].pruner = optuna.pruners.ThresholdPruner(lower=1.0, n_warmup_steps=0)
    tuner.run_trial("mf", deadline=1e18)
    tuner.run_trial("ease", deadline=1e18)
    (mf,) = tuner.studies["mf"].trials
    assert mf.state == optuna.trial.TrialState.PRUNED and list(mf.intermediate_values) == [1]
    assert not (out / "runs" / "mf" / "t000" / "model.safetensors").exists()  # weights of pruned trials go
    assert not (out / "runs" / "mf" / ".t000.partial").exists()  # and the state a resume would need


def test_a_climbing_trial_below_the_median_is_not_pruned_until_it_stalls(toy_dataset, tmp_path):
    study = Tuner(DCFG, tmp_path / "t", 30, ["mf"], dataset=toy_dataset, progress=False, threads=1).studies["mf"]
    for _ in range(2):  # two finished trials that were far ahead at every epoch
        t = study.ask()
        for epoch in range(1, 8):
            t.report(0.5 + 0.01 * epoch, epoch)
        study.tell(t, 0.57)
    slow = study.ask()
    verdicts = []
    for epoch, v in enumerate([0.10, 0.15, 0.20, 0.25, 0.30, 0.29, 0.295], start=1):
        slow.report(v, epoch)
        verdicts.append(slow.should_prune())
    # below the median from the first epoch, but climbing: kept until two epochs in a row set no new best
    assert verdicts == [False] * 6 + [True]


def test_budget_stops_an_sgd_trial_at_its_best_epoch(toy_dataset, tmp_path, monkeypatch):
    import time

    from ncf.train.trainer import Trainer

    tuner = Tuner(DCFG, tmp_path / "t", 30, ["mf"], dataset=toy_dataset, progress=False, epochs=50, threads=1)
    # an epoch lasts 0.3 s at least: the budget's end, 2 s away, stops the trial well before its 50 epochs
    slow = Trainer.train_epoch
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, *a, **k: (time.sleep(0.3), slow(self, *a, **k))[1])
    t0 = time.monotonic()
    assert tuner.run_trial("mf", deadline=t0 + 2.0) == "complete"
    # the slack: the run's own writing and its last validation (a busy 2-core machine: seconds)
    assert time.monotonic() - t0 < 2.0 + 3.0
    (t,) = tuner.studies["mf"].trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["best_epoch"] >= 1
    ran = json.loads((Path(t.user_attrs["run"]) / "summary.json").read_text())["epochs_run"]
    assert t.user_attrs["best_epoch"] <= ran < 7
    # due before the first epoch's first step (1.5 s in): nothing to keep, the trial is recorded as stopped
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, *a, **k: (time.sleep(1.5), slow(self, *a, **k))[1])
    assert tuner.run_trial("mf", deadline=time.monotonic() + 1.0) == "failed"
    t = tuner.studies["mf"].trials[-1]
    assert t.state == optuna.trial.TrialState.FAIL and "no epoch finished" in t.user_attrs["timeout"]
    # already due: not started at all
    assert tuner.run_trial("mf", deadline=time.monotonic()) == "skipped"
    assert tuner.studies["mf"].trials[-1].user_attrs["skipped"] == "time"


def test_the_next_trial_goes_to_the_model_that_used_the_least_time():
    from ncf.tune.search import choose

    # a 500 s MF trial against 5 s iALS trials: iALS keeps the turn until it has used as much time
    assert choose({"ials": (40.0, [0.5, 0.51, 0.52]), "mf": (500.0, [0.55])}) == "ials"
    assert choose({"ials": (520.0, [0.5, 0.51, 0.52]), "mf": (500.0, [0.55])}) == "mf"
    assert choose({"ease": (9.0, [0.5]), "ials": (9.0, [0.4])}) == "ease"  # a tie: the order given
    assert choose({}) is None


def test_a_stalled_model_waits_while_another_still_improves():
    from ncf.tune.search import STALL_TRIALS, choose, stalled

    flat = [0.59] + [0.58] * STALL_TRIALS  # no new best in its last STALL_TRIALS trials
    assert stalled(flat) and not stalled(flat[:-1]) and not stalled([0.5] * STALL_TRIALS)
    assert not stalled([0.59] + [0.58] * (STALL_TRIALS - 1) + [0.6])  # the last trial is a new best
    assert not stalled([0.59] * STALL_TRIALS + [0.5902])  # a gain of more than STALL_GAIN counts
    assert stalled([0.59] * STALL_TRIALS + [0.59001])  # a smaller one does not
    assert choose({"ease": (50.0, flat), "mf": (500.0, [0.55])}) == "mf"
    assert choose({"ease": (50.0, flat), "mf": (500.0, flat)}) == "ease"  # all stalled: least time again


@pytest.mark.parametrize("name", sorted(space.SPACES))
def test_spaces_give_valid_configs(name):
    from ncf.compare import trial_config

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(space.DEFAULTS[name])
    for _ in range(3):
        t = study.ask()
        trial_config(name, space.suggest(name, t), {"epochs": 2})  # raises on any unknown key
        study.tell(t, 0.0)


def test_a_fresh_study_starts_with_the_default_then_the_other_reference_settings(toy_dataset, tmp_path):
    tuner = Tuner(DCFG, tmp_path, 5, ["ials"], dataset=toy_dataset)
    study = tuner._study("ials", 0)
    from ncf.compare import trial_config

    firsts = []
    for _ in range(2):
        trial = study.ask()
        trial_config("ials", space.suggest("ials", trial), {"epochs": 2})  # a valid setting of the model
        firsts.append(trial.params)
    assert firsts == [space.DEFAULTS["ials"], *space.ALSO_FIRST["ials"]]


def test_bad_arguments(toy_dataset, tmp_path):
    with pytest.raises(ValueError, match="time-budget"):
        Tuner(DCFG, tmp_path, 0, ["ease"], dataset=toy_dataset)
    with pytest.raises(ValueError, match="cannot search"):
        Tuner(DCFG, tmp_path, 5, ["widedeep"], dataset=toy_dataset)
    with pytest.raises(ValueError, match="protocol"):
        Tuner(DCFG, tmp_path, 5, ["ease"], protocol="both", dataset=toy_dataset)
    with pytest.raises(ValueError, match="metric"):
        Tuner(DCFG, tmp_path, 5, ["ease"], protocol="topk", metric="ndcg", dataset=toy_dataset)
    with pytest.raises(ValueError, match="metric"):
        Tuner(DCFG, tmp_path, 5, ["ease"], protocol="sampled", metric="recall@20", dataset=toy_dataset)


def test_compare_uses_the_same_search(toy_dataset, tmp_path):
    import ncf.compare as cmp

    p = cmp.proposals("ease", None, 3, seed=0)
    assert isinstance(p, space.Proposals)
    seen = []
    for trial in p:
        seen.append(trial)
        p.tell(0.5)
    assert seen[0] == {"l2": 500.0} and len(seen) == 3  # the default first, then TPE
    assert list(cmp.proposals("ease", [{"l2": 1.0}], 3)) == [{"l2": 1.0}]  # an explicit grid as before
    results = cmp.compare(DCFG, ["pop", "ease"], tmp_path / "c", tune_budget=2, dataset=toy_dataset, progress=False)
    assert set(results) == {"pop", "ease"}
    tuning = json.loads((tmp_path / "c" / "tuning.json").read_text())["models"]
    assert tuning["ease"]["trials"][0]["config"] == {"l2": 500.0} and len(tuning["ease"]["trials"]) == 2


def test_cli_tune_json(tmp_path):
    from typer.testing import CliRunner

    from ncf.cli import app, main

    rng = __import__("numpy").random.default_rng(5)
    lines = [f"{u}\t{i}\t4\t{t}" for u in range(1, 31)
             for t, i in enumerate(rng.choice(range(1, 25), size=8, replace=False))]
    data = tmp_path / "r.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "tune"
    res = CliRunner().invoke(app, ["tune", "--dataset", str(data), "--time-budget", "4", "--out", str(out),
                                   "--models", "ease,itemknn", "--quiet", "--json", "--threads", "1"])
    assert res.exit_code == 0, (res.output, res.exception)
    s = json.loads(res.stdout[res.stdout.index("{"):])
    assert s["model"] in ("ease", "itemknn") and (out / "best" / "config.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["tune", "--dataset", str(data), "--time-budget", "4", "--out", str(tmp_path / "x"), "--models", "svd"])
    assert e.value.code == 2
    # a CSV of one's own, its columns named: the time column makes the split by time, so auto refits
    csv_file = tmp_path / "shop.csv"
    csv_file.write_text("customer,product,stars,ts\n" + "\n".join(
        f"c{line.split()[0]},p{line.split()[1]},{line.split()[2]},{line.split()[3]}" for line in lines) + "\n")
    res = CliRunner().invoke(app, ["tune", "--dataset", str(csv_file), "--user-col", "customer", "--item-col",
                                   "product", "--rating-col", "stars", "--time-col", "ts", "--time-budget", "3",
                                   "--out", str(tmp_path / "csv"), "--models", "ease", "--quiet", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    s = json.loads(res.stdout[res.stdout.index("{"):])
    assert s["refit"] is not None and "looks like a time" not in res.output
    assert json.loads((tmp_path / "csv" / "best" / "config.json").read_text())["data"]["time_col"] == "ts"
    res = CliRunner().invoke(app, ["tune", "--dataset", str(csv_file), "--user-col", "buyer", "--time-budget", "3",
                                   "--out", str(tmp_path / "bad"), "--models", "ease", "--quiet"])
    assert res.exit_code != 0 and "buyer" in str(res.exception) + res.output


def _dated_ratings(tmp_path, n_users=40, n_items=30, per_user=10, seed=5):
    """A timestamped ratings file: leave-one-out holds out each user's latest item for test and
    the one before for validation, so ``--refit auto`` refits."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = [f"{u}\t{i}\t4\t{t}" for u in range(1, n_users + 1)
             for t, i in enumerate(rng.choice(range(1, n_items + 1), size=per_user, replace=False))]
    data = tmp_path / "r.tsv"
    data.write_text("\n".join(lines) + "\n")
    return DataConfig(source=str(data), rating_col="2", time_col="3")


def test_refit_trains_the_choice_again_on_train_and_validation(tmp_path):
    """auto on a timestamped leave-one-out source: DIR/best is the chosen run trained again on
    train + validation (an SGD model for its best epoch count), tested on the same test holdout
    (``ncf evaluate`` of DIR/best reads what summary.json says); the choice's validation figures
    and its test as trained are kept."""
    import numpy as np

    from ncf.checkpoint import load_train_matrix
    from ncf.data.datasets import load_dataset
    from ncf.eval.evaluator import evaluate

    dcfg = _dated_ratings(tmp_path)
    ds = load_dataset(dcfg)
    assert ds.report["timestamps"]
    s = tune(dcfg, tmp_path / "t", 4, ["mf"], progress=False, threads=1, epochs=3)
    chosen = s["per_model"]["mf"]
    refit, best = s["refit"], tmp_path / "t" / "best"
    assert refit["from"] == chosen["run"] and refit["run"].endswith("refit/mf")
    assert json.loads((Path(chosen["run"]) / "summary.json").read_text())["test"] is None  # trials never read test
    assert json.loads((best / "config.json").read_text())["data"]["valid"] is False
    assert (load_train_matrix(best).astype(bool) != ds.seen(True).astype(bool)).nnz == 0  # train + validation
    epochs = [json.loads(line)["epoch"] for line in (best / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, chosen["best_epoch"] + 1))
    again = evaluate(load_model(best), ds.test, "sampled")
    assert again["hr@10"] == pytest.approx(s["test"]["sampled"]["hr@10"])
    assert s["valid"]["sampled"]["ndcg@10"] == pytest.approx(chosen["valid_score"])  # the choice as trained
    # rerunning the finished tune (its budget spent: no new trial) keeps its refit (no second training),
    # and a changed one is redone
    stamp = (Path(refit["run"]) / "model.safetensors").stat().st_mtime_ns
    again_s = tune(dcfg, tmp_path / "t", 0.01, ["mf"], progress=False, threads=1, epochs=3)
    assert again_s["refit"] == refit and again_s["test"] == s["test"]
    assert (Path(refit["run"]) / "model.safetensors").stat().st_mtime_ns == stamp
    marker = tmp_path / "t" / "runs" / "refit" / "refit.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "from": "elsewhere"}))
    tuner = Tuner(dcfg, tmp_path / "t", 0.01, ["mf"], progress=False, threads=1, epochs=3)
    tuner.refit("mf", tuner.best("mf"))
    assert (Path(refit["run"]) / "model.safetensors").stat().st_mtime_ns != stamp
    # an ensemble: its members with a weight refitted, blended with the weights chosen on validation
    s = tune(dcfg, tmp_path / "e", 6, ["ease", "itemknn", "pop", "ensemble"], progress=False, threads=1)
    assert np.isfinite(s["test"]["sampled"]["hr@10"]) and s["refit"] is not None
    tuner = Tuner(dcfg, tmp_path / "e", 6, ["ease", "itemknn", "pop", "ensemble"], progress=False, threads=1)
    trial = tuner.best("ensemble")
    out = Path(tuner.refit("ensemble", trial)["run"])
    weights = json.loads((Path(trial.user_attrs["run"]) / "config.json").read_text())["model_params"]["weights"]
    cfg = json.loads((out / "config.json").read_text())["model_params"]
    assert cfg["weights"] == [w for w in weights if w > 0] and len(cfg["members"]) == sum(w > 0 for w in weights)
    assert all("/refit/m" in m["source"] for m in cfg["members"])
    for m in cfg["members"]:
        assert (load_train_matrix(Path(m["source"])).astype(bool) != ds.seen(True).astype(bool)).nnz == 0


def test_refit_no_auto_by_split_and_where_it_cannot_be_done(tmp_path, toy_dataset):
    from ncf.errors import ConfigError

    dcfg = _dated_ratings(tmp_path)
    s = tune(dcfg, tmp_path / "n", 3, ["ease"], progress=False, threads=1, refit="no")
    assert s["refit"] is None
    assert json.loads((tmp_path / "n" / "best" / "config.json").read_text())["data"]["valid"] is True
    with pytest.raises(ConfigError, match="refit must be auto, yes or no"):
        Tuner(dcfg, tmp_path / "x", 3, ["ease"], refit="always")
    # auto: validation just before test in time (temporal, ratio-time) refits, and a random share of each
    # user's items (ratio, as a given split's carved validation) too; leave-one-out without timestamps does not
    for split, refits in (("temporal", True), ("ratio-time", True), ("ratio", True)):
        cfg = dataclasses.replace(dcfg, split=split)
        assert (Tuner(cfg, tmp_path / split, 3, ["ease"]).full is not None) is refits, split
    assert Tuner(dataclasses.replace(dcfg, split="ratio"), tmp_path / "r", 3, ["ease"], refit="yes").full is not None
    # a dataset that is not what its DataConfig loads cannot be refitted: refused by name, before any trial
    with pytest.raises(ConfigError, match="--refit yes: .* other user or item ids"):
        Tuner(dcfg, tmp_path / "y", 3, ["ease"], dataset=toy_dataset, refit="yes")
    assert not (tmp_path / "y").exists()


def test_tune_never_writes_into_a_run_or_foreign_files(toy_dataset, tmp_path):
    """``ncf tune --out RUN`` replaced the run's summary.json and mixed the study's files into it."""
    import ncf
    from ncf.errors import RunExistsError

    run = ncf.fit("pop", toy_dataset, progress=False).save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunExistsError, match="holds a run"):
        tune(DCFG, run, 5, ["ease"], dataset=toy_dataset, progress=False, threads=1)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="todo.txt"):
        tune(DCFG, notes, 5, ["ease"], dataset=toy_dataset, progress=False, threads=1)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]


def test_tune_into_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from ncf.cli import main

    real_open = os.open

    def ro_open(path, flags, *a, **kw):
        if str(path).startswith(str(tmp_path / "ro")) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", ro_open)
    with pytest.raises(SystemExit) as e:
        main(["tune", "--dataset", "toy-missing.csv", "--time-budget", "5", "--out", str(tmp_path / "ro" / "t")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "read-only file system" in err, err
