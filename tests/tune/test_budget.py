"""``ncf tune``'s time budget is a promise (deadlines inside fits, estimates before one-shot
fits, memory and failure handling), the ``topk`` protocol, and models outside ``space.ORDER``."""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from ncf.config import TrainConfig  # noqa: E402
from ncf.data.datasets import DataConfig  # noqa: E402
from ncf.deadline import Steps  # noqa: E402
from ncf.errors import NcfError, TrialTimeout  # noqa: E402
from ncf.models.baselines import EASE, ItemKNN  # noqa: E402
from ncf.tune import Tuner, space, tune  # noqa: E402

DCFG = DataConfig(source="toy")
FAIL = optuna.trial.TrialState.FAIL


def _ratings(tmp_path, n_users=40, n_items=30, per_user=10, seed=5) -> Path:
    rng = np.random.default_rng(seed)
    lines = [f"{u}\t{i}\t4\t{t}" for u in range(1, n_users + 1)
             for t, i in enumerate(rng.choice(range(1, n_items + 1), size=per_user, replace=False))]
    data = tmp_path / "r.tsv"
    data.write_text("\n".join(lines) + "\n")
    return data


def _slow_fit(seconds: list[float]):
    """A fit of ``len(seconds)`` iterations, of those seconds, that checks its ``cfg.deadline`` as
    every iterative fit does (:class:`ncf.deadline.Steps`), then fits EASE for real."""
    real = EASE.fit

    def fit(self, dataset, cfg=None):
        steps = Steps(getattr(cfg, "deadline", None), len(seconds), "slow ease")
        for k, sec in enumerate(seconds):
            time.sleep(sec)
            steps.done(k + 1)
        return real(self, dataset, cfg)

    return fit


def test_trial_timeout_is_an_ncf_error():
    assert issubclass(TrialTimeout, NcfError) and issubclass(TrialTimeout, TimeoutError)
    cfg = TrainConfig(model="ease", deadline=time.monotonic() + 5)
    assert "deadline" not in cfg.to_dict()  # process-local: never written to a run's config.json
    assert TrainConfig.from_dict(cfg.to_dict()).deadline is None
    with pytest.raises(ValueError, match="unknown option"):
        TrainConfig.for_model("ease", {"deadline": 3.0})


def test_steps_stop_at_the_deadline_and_as_soon_as_the_rest_cannot_fit():
    with pytest.raises(TrialTimeout, match="not started"):
        Steps(time.monotonic() - 1, 10, "x")
    steps = Steps(time.monotonic() + 0.05, 10, "x")
    time.sleep(0.06)
    with pytest.raises(TrialTimeout, match="time limit reached after 1 of 10"):
        steps.done(1)
    steps = Steps(time.monotonic() + 5, 1000, "x")
    time.sleep(0.02)  # 0.02 s an iteration: the 999 others would take 20 s, 5 s are left
    with pytest.raises(TrialTimeout, match="999 would take about"):
        steps.done(1)
    steps = Steps(None, 3, "x")
    steps.done(1)  # no deadline: nothing to check


def test_a_slow_fit_cannot_make_tune_overrun_its_budget(toy_dataset, tmp_path, monkeypatch):
    """EASE made slow (200 iterations of 0.1 s, checking its deadline): stopped after its first
    iteration (the rest cannot fit), recorded as failed; the search goes on and ends in time."""
    tune(DCFG, tmp_path / "warm", 1, ["pop"], dataset=toy_dataset, progress=False, threads=1)  # imports
    monkeypatch.setattr(EASE, "fit", _slow_fit([0.1] * 200))
    budget = 6.0
    t0 = time.monotonic()
    s = tune(DCFG, tmp_path / "t", budget, ["pop", "ease"], dataset=toy_dataset, progress=False, threads=1)
    assert time.monotonic() - t0 < budget + 3.0  # slack: the report (validation and test of DIR/best, plots)
    assert s["model"] == "pop" and s["per_model"]["ease"]["valid_score"] is None
    ease = [t for t in Tuner(DCFG, tmp_path / "t", budget, ["pop", "ease"], dataset=toy_dataset,
                             progress=False, threads=1).studies["ease"].trials if t.state == FAIL]
    assert ease and "would take about" in ease[0].user_attrs["timeout"]
    assert ease[0].user_attrs["seconds"] < 1.0  # stopped after one iteration, not at the deadline


def test_an_iterative_fit_stops_at_the_deadline(toy_dataset, tmp_path, monkeypatch):
    """A fit whose first iteration promised to finish but whose second ran past the deadline
    stops there: the trial fails and leaves no run behind."""
    monkeypatch.setattr(EASE, "fit", _slow_fit([0.01, 1.0, 0.01, 0.01]))
    tuner = Tuner(DCFG, tmp_path / "t", 60, ["ease"], dataset=toy_dataset, progress=False, threads=1)
    t0 = time.monotonic()
    assert tuner.run_trial("ease", deadline=t0 + 0.6) == "failed"
    assert time.monotonic() - t0 < 1.0 + 1.5  # the second iteration's second, then the run cleared away
    (t,) = tuner.studies["ease"].trials
    assert t.state == FAIL and "time limit reached after 2 of 4" in t.user_attrs["timeout"]
    assert not Path(t.user_attrs["run"]).exists() and not list((tmp_path / "t" / "runs" / "ease").glob(".*partial"))


@pytest.mark.parametrize("scaled", [False, True], ids=["implicit", "own-cg"])
def test_ials_checks_its_deadline_between_iterations(toy_dataset, scaled):
    pytest.importorskip("implicit")
    from ncf.models.ials import ImplicitALS

    params = {"factors": 8, "iterations": 100000, "unobserved_weight": 0.2,
              "frequency_scaling": 1.0 if scaled else 0.0}
    model = ImplicitALS.from_params(toy_dataset.n_users, toy_dataset.n_items, **params)
    t0 = time.monotonic()
    with pytest.raises(TrialTimeout, match="ials: stopped after"):
        model.fit(toy_dataset, TrainConfig(model="ials", threads=1, deadline=t0 + 3.0))
    assert time.monotonic() - t0 < 3.0  # the pace of the first iterations said it could not finish
    with pytest.raises(TrialTimeout, match="not started"):
        model.fit(toy_dataset, TrainConfig(model="ials", threads=1, deadline=t0 - 1))
    quick = ImplicitALS.from_params(toy_dataset.n_users, toy_dataset.n_items, **{**params, "iterations": 3})
    quick.fit(toy_dataset, TrainConfig(model="ials", threads=1, deadline=time.monotonic() + 60))
    assert quick.user_factors.abs().sum() > 0


def test_sgd_stops_within_an_epoch_keeping_its_best_finished_one(toy_dataset, monkeypatch):
    from ncf.train.run import train_model
    from ncf.train.trainer import Trainer

    steps_run = []
    real = Trainer._check_deadline

    def check(self, epoch, step, n_steps):
        if epoch == 2 and step == 2:
            self.deadline = time.monotonic() - 1  # the deadline passes during epoch 2
        steps_run.append((epoch, step, n_steps))
        return real(self, epoch, step, n_steps)

    monkeypatch.setattr(Trainer, "_check_deadline", check)
    cfg = TrainConfig(model="mf", epochs=5, batch_size=64, threads=1, deadline=time.monotonic() + 600)
    _, summary = train_model(None, cfg, None, toy_dataset.without_test(), progress=False)
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1 and "epoch 2" in summary["stopped"]
    assert steps_run[-1][:2] == (2, 2) and steps_run[-1][2] > 3  # cut within the epoch, not at its end
    with pytest.raises(TrialTimeout, match="no epoch finished"):
        train_model(None, dataclasses.replace(cfg, deadline=time.monotonic() - 1), None, toy_dataset.without_test(),
                    progress=False)


def test_one_shot_fits_are_not_started_when_their_estimate_does_not_fit(toy_dataset, tmp_path):
    tuner = Tuner(DCFG, tmp_path / "t", 60, ["ease", "ials"], dataset=toy_dataset, progress=False, threads=1)
    assert tuner.estimate("ease", {"l2": 1.0}) < 5  # before any trial: the probe, tiny on 40 items
    # an earlier session's trial that took 100 s
    dist = {"l2": optuna.distributions.FloatDistribution(10.0, 20000.0, log=True)}
    tuner.studies["ease"].add_trial(optuna.trial.create_trial(
        params={"l2": 500.0}, distributions=dist, value=0.5,
        user_attrs={"seconds": 100.0, "params": {"l2": 500.0}, "run": str(tmp_path / "gone")}))
    assert tuner.estimate("ease", {"l2": 9.0}) == pytest.approx(100.0)
    assert tuner.run_trial("ease", deadline=time.monotonic() + 30) == "skipped"
    (t,) = [t for t in tuner.studies["ease"].trials if t.state == FAIL]
    assert t.user_attrs["skipped"] == "time" and not Path(t.user_attrs["run"]).exists()
    assert tuner._next(time.monotonic() + 30, set()) is None  # no ease trial fits 30 s any more
    # iALS: the earlier trials' seconds per unit of space.cost, times the new setting's cost
    base = {"factors": 32, "iterations": 10, "regularization": 0.01, "alpha": 1.0, "unobserved_weight": 0.2,
            "frequency_scaling": 0.0}
    assert space.cost("ials", {**base, "factors": 128}) / space.cost("ials", base) == pytest.approx(8.0)
    assert space.cost("ease", {"l2": 1.0}) == space.cost("ease", {"l2": 1e4}) == 1.0


def test_candidates_over_memory_are_skipped_and_failed_trials_recorded(toy_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(EASE, "memory_estimate", classmethod(lambda cls, nu, ni, nnz, p: 1 << 60), raising=False)

    def broken(self, dataset, cfg=None):
        raise RuntimeError("itemknn: broken on purpose")

    monkeypatch.setattr(ItemKNN, "fit", broken)
    s = tune(DCFG, tmp_path / "t", 6, ["pop", "ease", "itemknn"], dataset=toy_dataset, threads=1)
    assert s["model"] == "pop"
    assert s["per_model"]["ease"]["why"] == "skipped (memory)"
    assert "broken on purpose" in s["per_model"]["itemknn"]["why"] and s["per_model"]["itemknn"]["failed"] >= 1
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if "GiB are available" in ln]
    assert lines and all("ease would need about" in ln for ln in lines)


def test_topk_protocol_chooses_on_recall_at_20_and_reads_test_once(tmp_path, monkeypatch):
    """A ratio split (several held-out items a user): topk by default, chosen on validation
    recall@20; summary.json reports test at k 10 and 20, read once, for DIR/best alone."""
    import ncf.eval.topk as topk_mod
    from ncf.data.datasets import load_dataset

    dcfg = DataConfig(source=str(_ratings(tmp_path, n_items=60, per_user=30)), rating_col="2", time_col="3",
                      split="ratio")  # 3 validation and 3 test items a user
    test = load_dataset(dcfg).test
    reads = []
    real = topk_mod.evaluate_topk

    def spy(model, holdout, seen, k=10):
        if len(holdout) == len(test) and np.array_equal(holdout.items, test.items):
            reads.append(k)
        return real(model, holdout, seen, k)

    monkeypatch.setattr(topk_mod, "evaluate_topk", spy)
    s = tune(dcfg, tmp_path / "t", 5, ["ease", "itemknn"], progress=False, threads=1)
    assert s["protocol"] == "topk" and s["metric"] == "recall@20"
    assert s["refit"] is not None  # ratio: auto refits on train + validation (test read once all the same)
    for key in ("recall", "ndcg", "precision", "map", "coverage"):
        for k in (10, 20):
            assert 0 <= s["test"]["topk"][f"{key}@{k}"] <= 1 and f"{key}@{k}" in s["valid"]["topk"]
    assert set(s["test"]) == {"topk"} and reads == [(10, 20)]  # one ranking of the test users for both cut-offs
    chosen = s["per_model"][s["model"]]
    assert chosen["valid_score"] == pytest.approx(s["valid"]["topk"]["recall@20"])
    assert json.loads((Path(chosen["run"]) / "summary.json").read_text())["test"] is None
    # --metric ndcg@20 chooses on that
    s = tune(dcfg, tmp_path / "n", 3, ["ease"], metric="ndcg@20", progress=False, threads=1)
    assert s["select_by"] == "valid topk ndcg@20"
    assert s["per_model"]["ease"]["valid_score"] == pytest.approx(s["valid"]["topk"]["ndcg@20"])


def test_refit_auto_on_a_given_split():
    from types import SimpleNamespace

    from ncf.tune.search import refit_helps, several_a_user

    given = SimpleNamespace(report={"split": "given"}, valid=None)
    assert refit_helps(given) and several_a_user(given)
    assert refit_helps(SimpleNamespace(report={"split": "ratio"}))
    assert not refit_helps(SimpleNamespace(report={"split": "loo", "timestamps": False}))


def test_models_outside_order_are_searched_and_refitted_for_their_chosen_epoch(tmp_path, monkeypatch):
    """A registry model whose space was added without a place in ORDER or a default (sasrec here,
    a model with its own epoch loop): searched after the others; its refit on train + validation
    trains for the epoch count validation chose (``stats["best_epoch"]`` in its summary)."""
    monkeypatch.setitem(space.SPACES, "sasrec", lambda trial: {
        "epochs": 4, "dim": 8, "max_len": 5, "lr": trial.suggest_float("lr", 0.005, 0.02, log=True)})
    assert space.ordered(["sasrec", "mf", "ease", "mf"]) == ["ease", "mf", "sasrec"]
    dcfg = DataConfig(source=str(_ratings(tmp_path)), rating_col="2", time_col="3")  # timestamped loo: refits
    s = tune(dcfg, tmp_path / "t", 12, ["sasrec", "pop"], progress=False, threads=1)
    rows = (tmp_path / "t" / "trials.csv").read_text().splitlines()
    assert rows[1].startswith("pop,") and any(r.startswith("sasrec,") for r in rows)
    sas = s["per_model"].get("sasrec")
    assert sas and sas["best_epoch"] is not None
    if s["model"] == "sasrec":
        best = json.loads((tmp_path / "t" / "best" / "config.json").read_text())
        assert best["model_params"]["epochs"] == sas["best_epoch"]
    from ncf.tune.search import refit_config

    tc = refit_config(Path(sas["run"]))
    assert tc["params"]["epochs"] == sas["best_epoch"] and tc["params"]["lr"] == sas["params"]["lr"]


def test_refit_config_trains_for_the_epoch_count_validation_chose(tmp_path):
    from ncf.tune.search import refit_config

    def run(name, model, model_params, train, best):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model": model, "model_params": model_params, "train": train}))
        (d / "summary.json").write_text(json.dumps({"best_epoch": best}))
        return d

    own_loop = run("s", "sasrec", {"epochs": 40, "dim": 8}, {"model": "sasrec", "params": {"epochs": 40, "dim": 8}}, 7)
    assert refit_config(own_loop)["params"] == {"epochs": 7, "dim": 8}
    sgd = run("m", "mf", {"factors": 8}, {"model": "mf", "epochs": 30, "params": {}}, 5)
    assert refit_config(sgd)["epochs"] == 5 and refit_config(sgd)["params"] == {}
    one_shot = run("e", "ease", {"l2": 5.0}, {"model": "ease", "params": {"l2": 5.0}}, None)
    assert refit_config(one_shot) == {"model": "ease", "params": {"l2": 5.0}}


def test_the_fit_leaves_time_for_its_validation_score(tmp_path, monkeypatch):
    """Under topk the validation score ranks every item (minutes on Gowalla-sized data): the fit's
    deadline comes that much before the trial's, measured by a probe before the first trial and
    by the last trial after."""
    import ncf.tune.search as search

    dcfg = DataConfig(source=str(_ratings(tmp_path, n_items=60, per_user=30)), split="ratio")
    tuner = Tuner(dcfg, tmp_path / "t", 60, ["ease"], progress=False, threads=1)
    assert tuner.protocol == "topk" and 0 < tuner.eval_estimate() < 5  # the probe, on 40 users
    tuner.eval_seconds = None
    monkeypatch.setattr(search, "eval_probe_seconds", lambda *a: 100.0)
    assert tuner.run_trial("ease", deadline=time.monotonic() + 60) == "skipped"  # 60 s: not enough for 100
    (t,) = tuner.studies["ease"].trials
    assert t.user_attrs["skipped"] == "time"
    tuner.eval_seconds = None
    monkeypatch.setattr(search, "eval_probe_seconds", lambda *a: 0.5)
    assert tuner.run_trial("ease", deadline=time.monotonic() + 60) == "complete"
    assert tuner.eval_seconds != 0.5  # measured on the trial


def test_tune_on_a_given_split_refits_on_the_whole_training_file(tmp_path, monkeypatch):
    """Training and test files (adjacency lists, like Gowalla's): topk by default, validation carved
    from the training file, the choice refitted on all of it (auto), and the test file read only by
    the final evaluation of DIR/best."""
    from ncf.checkpoint import load_train_matrix
    from ncf.data.split import LazyHoldOut

    rng = np.random.default_rng(3)
    train, test = [], []
    for u in range(50):
        items = rng.choice(60, size=25, replace=False)
        train.append(" ".join(map(str, [u, *items[:20]])))
        test.append(" ".join(map(str, [u, *items[20:]])))
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test) + "\n")
    dcfg = DataConfig(source=str(tmp_path / "train.txt"), test_file=str(tmp_path / "test.txt"), layout="adjacency")
    loaded = []
    real = LazyHoldOut.resolve
    monkeypatch.setattr(LazyHoldOut, "resolve", lambda self: (loaded.append(self.loaded), real(self))[1])
    tuner = Tuner(dcfg, tmp_path / "t", 5, ["ease", "itemknn"], progress=False, threads=1)
    assert tuner.protocol == "topk" and tuner.full is not None and not loaded  # nothing read the test file yet
    s = tuner.run()
    assert s["refit"] is not None and set(s["test"]) == {"topk"} and loaded
    whole = load_dataset_train(dcfg)
    assert (load_train_matrix(tmp_path / "t" / "best").astype(bool) != whole.astype(bool)).nnz == 0


def load_dataset_train(dcfg):
    """The whole training file's interactions (the given split loaded without a validation holdout)."""
    from ncf.data.datasets import load_dataset

    return load_dataset(dataclasses.replace(dcfg, valid=False)).train.matrix


def test_steps_without_projection_stop_at_the_deadline_only():
    steps = Steps(time.monotonic() + 0.3, 1000, "x", unit="epochs", project=False)
    time.sleep(0.02)
    steps.done(1)  # 999 more would not fit, but the loop may stop early: going on
    time.sleep(0.3)
    with pytest.raises(TrialTimeout, match="after 2 of 1000 epochs"):
        steps.done(2)


def test_a_refit_that_would_overrun_the_budget_is_not_started(tmp_path):
    dcfg = DataConfig(source=str(_ratings(tmp_path)), rating_col="2", time_col="3")  # timestamped loo: refits
    tuner = Tuner(dcfg, tmp_path / "t", 60, ["ease"], progress=False, threads=1)
    assert tuner.run_trial("ease", deadline=time.monotonic() + 60) == "complete"
    best = tuner.best("ease")
    assert 0 < tuner._refit_seconds("ease", best) <= 1.2 * best.user_attrs["fit_seconds"]
    tuner.deadline = time.monotonic() - 10 * 60  # the budget long spent (a first trial that took all of it)
    assert tuner.refit("ease", best) is None
    assert not (tmp_path / "t" / "runs" / "refit").exists()
    tuner.deadline = None  # no budget running (a refit asked for directly)
    assert tuner.refit("ease", best)["run"].endswith("refit/ease")
