"""``ncf tune``: find the best model for a dataset within a wall-clock budget, on validation only.

One Optuna study per model (TPE sampler, seeded; each model's first trial is its default from
:data:`ncf.tune.space.DEFAULTS`), all kept in ``DIR/study.sqlite3``: rerunning the command on
the same DIR resumes (finished trials count, their time is charged to the budget; a trial that
was running when the process died is marked failed and its run directory redone). Every trial
is an ordinary run (:func:`ncf.train.run.train`) in ``DIR/runs/MODEL/tNNN``, trained on the
dataset without its test holdout. SGD trials report
their validation score after each epoch: Optuna's median pruner stops those below the median of
the model's earlier trials at the same epoch once they stop climbing (two epochs in a row without a
new best: Optuna's ``PatientPruner``; a slow learner, such as MF at a small learning rate, is not
cut while it still climbs), and the budget's end stops a trial at its
best epoch so far.

The budget is a promise: every fit gets the search's end as ``cfg.deadline`` (``time.monotonic()``)
and no trial runs past it. SGD trials check it before every optimizer step (a trial cut within
its first epoch fails; a later one keeps its best finished epoch); iterative fitted models (iALS)
after every iteration, stopping as soon as the iterations left would not fit; one-shot fits (EASE,
item-KNN, an SVD) cannot be interrupted, so a drawn setting is not started where its estimated
time (:meth:`Tuner.estimate`: the model's earlier trials scaled by ``space.COST``, or for EASE
a timed probe inversion) exceeds the time left. A setting whose ``memory_estimate`` exceeds the
available memory is skipped with one line; a failed or stopped trial is recorded (state fail)
and the search goes on.

Scheduling: every model gets its default trial first (cheapest first, ``space.ORDER``); then the
next trial goes to the model that has used the least time so far (:func:`choose`: shares of the
budget's seconds, not turns, so a 5 s iALS trial and a 500 s MF trial do not count alike), except
that a model 0.02 (of the metric) or more behind the best one after three trials drops out, and a
model whose last eight trials brought no new best (by 1e-4) waits while another still improves.
With ``ensemble`` among the models, the last part of the budget blends the best run of up to three
other models (:class:`ncf.models.ensemble.Ensemble`, weights chosen on validation), which then
competes like any trial.

Refit (``refit``: auto, yes, no): the chosen run is trained again with every choice it made on
validation (settings, the best epoch count of an SGD model or of a model with its own epoch loop,
an ensemble's weights) on train + validation, and that is DIR/best and the test reported
(:func:`refit_run`); auto does so where the validation items come just before the test items in
time (leave-one-out on a timestamped source, temporal, ratio-time), and where validation is a
random share of each user's items (ratio; a given split, whose validation is carved so from the
training file, like the random per-user test split of such files: the refit trains on the whole
training file).
The search stops early enough to leave the refit its time.

Selection is by the validation holdout only (``protocol`` sampled: 1 + 99 candidates; full:
among every unseen item; topk: the field's full-ranking top-k metrics over every held-out item of a
user, :func:`ncf.eval.topk.evaluate_topk`, by default where the holdouts have several rows a user,
choosing on ``recall@20``); test is read once, after the choice, for DIR/best alone. Outputs in DIR::

    summary.json  chosen model, its params, its valid and test metrics, per-model bests (validation)
    best/         the chosen run directory, refitted where it was (ncf evaluate / recommend / serve accept it)
    trials.csv    every trial: model, state, params, validation score, seconds, run directory
    tune.png      validation score against elapsed time, per model
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import ncf.tune.space as space
from ncf.checkpoint import atomic_write_json, load_model, training_mismatch
from ncf.console import console
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.split import Dataset, LazyHoldOut
from ncf.errors import ConfigError, NcfError, TrialTimeout

DEFAULT_MODELS = ("gfcf", "bspm", "ease", "itemknn", "ials", "mf", "ensemble")
PROTOCOLS = ("sampled", "full", "topk")
TOPK_METRICS = ("recall", "capped_recall", "ndcg", "precision", "map", "hr", "mrr")  # --protocol topk: NAME@K
REPORT_KS = (10, 20)  # cut-offs of the top-k metrics reported on test (and on the choice's validation)
DROP_MARGIN = 0.02  # a model this far behind the best after 3 trials stops getting turns
STALL_TRIALS, STALL_GAIN = 8, 1e-4  # no gain of STALL_GAIN in this many trials: the model waits
ENSEMBLE_RESERVE = 0.1  # share of the budget (20 to 300 s, at most half) kept for the ensemble
REFIT = ("auto", "yes", "no")
REFIT_SLACK = 0.1  # share of the budget a refit may run past its end (the last trial ate into the reserve)
MEMORY_SKIPS = 3  # a model whose drawn settings were skipped this often for memory gets no more turns
FIRST_TRIES = 2  # attempts (failed or skipped) a model gets before one of its trials finishes


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("ncf tune needs Optuna: pip install 'ncf[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def is_sgd(name: str) -> bool:
    """Whether registry model ``name`` is trained by SGD through the Trainer (epochs, pruning)."""
    from ncf.models import get_model_class

    return bool(get_model_class(name).trainable)


def several_a_user(dataset: Dataset) -> bool:
    """Whether the dataset's holdouts have several rows for a user (``--split`` ratio, temporal,
    a given split...): what makes ``topk`` the default protocol. Read from the validation rows."""
    if dataset.report.get("split", "loo") == "given":
        return True
    users = np.asarray(dataset.valid.users) if dataset.valid is not None else np.zeros(0)
    return len(np.unique(users)) < len(users)


def parse_metric(protocol: str, metric: str | None) -> tuple[str, int]:
    """``metric`` checked for ``protocol`` (None: recall@20 for topk, else ndcg@10); (metric, its K)."""
    metric = metric or ("recall@20" if protocol == "topk" else "ndcg@10")
    name, _, k = metric.partition("@")
    if protocol == "topk":
        if name not in TOPK_METRICS or not k.isdigit() or int(k) < 1:
            raise ConfigError(f"--metric {metric!r} for --protocol topk: NAME@K with NAME one of "
                              f"{', '.join(TOPK_METRICS)} (e.g. recall@20, ndcg@20)")
        return metric, int(k)
    if metric not in ("ndcg@10", "hr@10"):
        raise ConfigError(f"--metric must be ndcg@10 or hr@10 under --protocol {protocol}, got {metric!r}")
    return metric, 10


def topk_metrics(model, holdout, seen, ks=REPORT_KS) -> dict[str, float]:
    """:func:`ncf.eval.topk.evaluate_topk` at every cut-off of ``ks``, in one dict, from one ranking
    of each user."""
    from ncf.eval.topk import evaluate_topk

    return dict(evaluate_topk(model, holdout, seen, tuple(ks)))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_needed(name: str, dataset: Dataset, params: dict[str, Any]) -> int | None:
    """Bytes the model class's ``memory_estimate(n_users, n_items, nnz, params)`` says a fit of
    ``params`` needs at its peak; None where the class has none."""
    from ncf.models import get_model_class

    est = getattr(get_model_class(name), "memory_estimate", None)
    if est is None:
        return None
    return int(est(dataset.n_users, dataset.n_items, dataset.train.nnz, params))


_PROBE_N = 800  # size of the matrix EASE's probe inverts


def ease_probe_seconds(n_items: int) -> float:
    """Seconds EASE's fit would take about on ``n_items`` items: a timed inversion of a
    ``_PROBE_N`` square matrix scaled by the cube of the size (the inversion dominates; x1.5 for
    the Gram matrix and B)."""
    n = min(_PROBE_N, max(n_items, 2))
    g = np.random.default_rng(0).random((n, n)) + n * np.eye(n)
    t0 = time.perf_counter()
    np.linalg.inv(g)
    return 1.5 * (time.perf_counter() - t0) * (n_items / n) ** 3


class _RandomScorer:
    """Random scores for every item: what :func:`eval_probe_seconds` ranks."""

    def __init__(self, n_users: int, n_items: int):
        import torch

        self.n_users, self.n_items = n_users, n_items
        self.gen = torch.Generator().manual_seed(0)

    def score_all(self, users):
        import torch

        return torch.rand(len(users), self.n_items, generator=self.gen)


def eval_probe_seconds(dataset: Dataset, protocol: str, k: int, users: int = 1024) -> float:
    """Seconds a validation score under ``protocol`` (topk, full) takes about: the evaluator timed
    on the validation rows of ``users`` users with random scores, scaled to every validation user
    (x1.5 for a real model's scores)."""
    from ncf.data.split import HoldOut

    valid = dataset.valid
    all_users = np.unique(valid.users)
    some = all_users[:users]
    rows = np.isin(valid.users, some)
    # neither evaluator reads candidates here (a given split draws them on first use: not for a probe)
    sub = HoldOut(valid.users[rows], valid.items[rows], np.zeros((int(rows.sum()), 1), np.int64))
    model = _RandomScorer(dataset.n_users, dataset.n_items)
    t0 = time.perf_counter()
    if protocol == "topk" or dataset.report.get("split", "loo") != "loo":
        from ncf.eval.topk import evaluate_topk

        evaluate_topk(model, sub, dataset.train.matrix, k)
    else:
        from ncf.eval.evaluator import evaluate

        evaluate(model, sub, "full", seen=dataset.train.matrix)
    return 1.5 * (time.perf_counter() - t0) * len(all_users) / max(len(some), 1)


def valid_score(run: Path, dataset: Dataset, protocol: str, metric: str, summary: dict) -> float:
    """The selection score of a finished run: its validation ``metric`` under ``protocol``
    (full ranks each validation item among all items unseen in training; topk, and full with
    several validation items a user, the top-k metrics of :mod:`ncf.eval.topk` over all of them)."""
    if protocol == "sampled":
        return float((summary.get("valid") or {}).get(metric, -math.inf))
    if protocol == "topk" and metric in (summary.get("valid_topk") or {}):  # scored as it was fitted
        return float(summary["valid_topk"][metric])
    if protocol == "topk":
        from ncf.eval.topk import evaluate_topk

        k = int(metric.partition("@")[2])
        got = evaluate_topk(load_model(run), dataset.valid, dataset.train.matrix, k)
        if metric not in got:
            raise ConfigError(f"--metric {metric}: the top-k evaluator has no such metric "
                              f"(it gives {', '.join(sorted(got))})")
        return float(got[metric])
    if dataset.report.get("split", "loo") != "loo":  # several items a user: top-k metrics over all of them
        from ncf.eval.topk import evaluate_topk

        return float(evaluate_topk(load_model(run), dataset.valid, dataset.train.matrix, 10)[metric])
    from ncf.eval.evaluator import evaluate

    return float(evaluate(load_model(run), dataset.valid, "full", seen=dataset.train.matrix)[metric])


def stalled(values: list[float]) -> bool:
    """True when the last ``STALL_TRIALS`` of these validation scores (trial order) did not beat
    the best before them by ``STALL_GAIN``."""
    if len(values) <= STALL_TRIALS:
        return False
    return max(values[-STALL_TRIALS:]) < max(values[:-STALL_TRIALS]) + STALL_GAIN


def choose(models: dict[str, tuple[float, list[float]]]) -> str | None:
    """The model to try next among ``models`` (name: (seconds its trials used, its finished trials'
    validation scores in order), in the order of preference for ties): the one that has used the
    least time, among those not :func:`stalled` (all of them where every one is)."""
    fresh = [m for m, (_, values) in models.items() if not stalled(values)] or list(models)
    return min(fresh, key=lambda m: (models[m][0], list(models).index(m))) if fresh else None


def refit_helps(dataset: Dataset) -> bool:
    """What ``--refit auto`` refits for: validation dated just before test (:func:`dated_validation`),
    or a random share of each user's items held out for validation (``ratio``; a given split, whose
    validation is carved so from the training file, as the given test file usually was from the
    whole: the refit trains on the whole training file). On ml-100k ``--split ratio`` refitting the
    same setting raised test recall@20 on 6 of 6 (model, seed) pairs, by 0.010-0.031 (EASE, iALS)."""
    return dated_validation(dataset) or dataset.report.get("split") in ("given", "ratio")


def dated_validation(dataset: Dataset) -> bool:
    """True where the validation items come just before the test items in time (leave-one-out on
    a timestamped source, ``temporal``, ``ratio-time``): what ``--refit auto`` refits for, since a
    model that never saw a user's most recent interactions is then tested on what comes next. (A
    random validation item, as on a source without timestamps, buys little back: issue 17.)"""
    split = dataset.report.get("split", "loo")
    return split in ("temporal", "ratio-time") or (split == "loo" and bool(dataset.report.get("timestamps")))


def same_split(dataset: Dataset, full: Dataset) -> str | None:
    """Why ``full`` (the source loaded without a validation holdout) is not ``dataset``'s train +
    validation with the same test holdout, or None where it is."""
    if full.train.user_map != dataset.train.user_map or full.train.item_map != dataset.train.item_map:
        return "other user or item ids"
    a, b = dataset.test, full.test
    if isinstance(a, LazyHoldOut) or isinstance(b, LazyHoldOut):  # a given split's test file, read by evaluation only
        if (dataset.config or {}).get("test_file") != (full.config or {}).get("test_file"):
            return "another test file"
    elif len(a) != len(b) or not (np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
                                and np.array_equal(a.candidates, b.candidates)):
        return "another test holdout"
    have = full.train.matrix.tocsr().astype(bool)
    if (dataset.seen(True).astype(bool) > have).nnz:  # held-out rows dropped for want of training may come back
        return "training interactions without all of train + validation"
    return None


def _warm_up() -> None:
    """Pay, before the budget's clock starts, for what the first trial would pay once: building a
    torch optimizer imports torch's compiler stack (24 s of a 7 s budget on a loaded machine),
    and the Trainer builds one for every run."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _drop_weights(run: Path) -> None:
    for f in ("model.safetensors", "state.safetensors"):
        (run / f).unlink(missing_ok=True)


class Tuner:
    """The search of one ``ncf tune`` invocation (see the module docstring)."""

    def __init__(self, data_cfg: DataConfig, out: Path, time_budget: float, models: list[str],
                 protocol: str | None = None, metric: str | None = None, seed: int = 0, epochs: int = 30,
                 threads: int = 0, device: str = "auto", dataset: Dataset | None = None, progress: bool = True,
                 refit: str = "auto"):
        if time_budget <= 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {time_budget}")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be sampled, full or topk, got {protocol!r}")
        if refit not in REFIT:
            raise ConfigError(f"--refit must be auto, yes or no, got {refit!r}")
        unknown = [m for m in models if m not in space.SPACES and m != "ensemble"]
        if unknown:
            raise ConfigError(f"ncf tune cannot search {', '.join(unknown)} (tunable: "
                             f"{', '.join(sorted([*space.SPACES, 'ensemble']))})")
        others = [m for m in dict.fromkeys(models) if m != "ensemble"]
        if "ensemble" in models and len(others) < 2:
            raise ConfigError(f"--models: ensemble blends the best runs of at least two other models, and "
                              f"{'only ' + others[0] + ' is' if others else 'none is'} given (e.g. --models "
                              "ease,itemknn,ensemble)")
        from ncf.models import get_model_class

        for m in models:
            get_model_class(m)  # missing optional dependencies fail before any training
        self.optuna = _optuna()
        self.data_cfg, self.out, self.budget = data_cfg, Path(out), float(time_budget)
        self.models = space.ordered(m for m in models if m != "ensemble")
        self.ensemble = "ensemble" in models
        self.seed, self.progress = seed, progress
        self.base = {"epochs": epochs, "patience": 3, "seed": seed, "threads": threads, "device": device}
        self.dataset = dataset or load_dataset(data_cfg)
        if self.dataset.valid is None or not len(self.dataset.valid):
            raise ConfigError("ncf tune chooses on a validation holdout, and this dataset has none (drop --no-valid)")
        self.protocol = protocol or ("topk" if several_a_user(self.dataset) else "sampled")
        self.metric, self.k = parse_metric(self.protocol, metric)
        # what every trial trains on: nothing of a trial can read test (test is read once, by finish)
        self.search_data = self.dataset.without_test()
        self.full = None  # the source without a validation holdout, where the choice is refitted on it
        if refit == "yes" or (refit == "auto" and refit_helps(self.dataset)):
            self.full = self._full_dataset(refit == "yes")
        self.memory_skips: dict[str, int] = {}
        self.deadline: float | None = None  # the budget's end (time.monotonic()), once ``run`` starts
        self.eval_seconds: float | None = None  # what scoring a trial on validation takes (topk, full)
        _warm_up()
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_resume()
        self.storage = f"sqlite:///{(self.out / 'study.sqlite3').resolve()}"
        self.studies = {m: self._study(m, i) for i, m in enumerate(self.models + ["ensemble"] * self.ensemble)}

    def _full_dataset(self, asked: bool) -> Dataset | None:
        from dataclasses import replace

        cfg = replace(self.data_cfg, valid=False)
        full = load_dataset(cfg)
        why = same_split(self.dataset, full)
        if why is None:
            self.full_cfg = cfg
            return full
        if asked:
            raise ConfigError(f"--refit yes: {self.data_cfg.source} loaded without a validation holdout has {why}, "
                              "so the choice cannot be refitted on train + validation (use --refit no)")
        console.print(f"[yellow]not refitting the choice on train + validation: {self.data_cfg.source} loaded "
                      f"without a validation holdout has {why}")
        return None

    # -- study bookkeeping -------------------------------------------------------------
    def _check_resume(self) -> None:
        meta = {"data": self.data_cfg.to_dict(), "protocol": self.protocol, "metric": self.metric, "base": self.base}
        path = self.out / "tune.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != json.loads(json.dumps(meta)):
                raise ConfigError(f"{path}: {self.out} holds a tune of another dataset or setting "
                                 f"({old}); use another --out")
            for train in sorted((self.out / "runs").glob("*/t*/train.safetensors"))[:1]:
                differ = training_mismatch(train.parent, self.dataset.train.matrix)
                if differ:
                    raise ConfigError(f"{self.out}: its runs were trained on another split of {self.data_cfg.source} "
                                      f"({train.parent}: {differ} interactions differ: the data changed, or an "
                                      "older ncf broke same-second ties otherwise): resuming would mix the two; "
                                      "use another --out")
        atomic_write_json(path, meta)

    def _study(self, name: str, k: int):
        optuna = self.optuna
        with warnings.catch_warnings():  # PatientPruner is marked experimental; the warning says nothing to a user
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = optuna.pruners.PatientPruner(
                optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2), patience=1)
        study = optuna.create_study(
            study_name=name, storage=self.storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed + 1000 * k, n_startup_trials=4), pruner=pruner,
        )
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)  # died with its process
        if study.trials:  # resumed: a sampler seeded as in the first session would draw its start-up points again
            study.sampler = optuna.samplers.TPESampler(seed=self.seed + 1000 * k + len(study.trials),
                                                       n_startup_trials=4)
        if name in space.DEFAULTS and not study.trials:
            for first in (space.DEFAULTS[name], *space.ALSO_FIRST.get(name, ())):
                study.enqueue_trial(first)
        return study

    def _done(self, name: str) -> list:
        return [t for t in self.studies[name].get_trials(deepcopy=False)
                if t.state == self.optuna.trial.TrialState.COMPLETE]

    def spent(self) -> float:
        """Seconds of every finished trial of every session (what a resumed tune has used)."""
        total = 0.0
        for study in self.studies.values():
            for t in study.get_trials(deepcopy=False):
                if t.datetime_complete and t.datetime_start:
                    total += (t.datetime_complete - t.datetime_start).total_seconds()
        return total

    def seconds(self, name: str) -> float:
        """Seconds the trials of ``name`` have used (finished and pruned; every session)."""
        return sum(t.user_attrs.get("seconds", 0.0) for t in self.studies[name].get_trials(deepcopy=False))

    def best(self, name: str):
        done = self._done(name)
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    # -- one trial ---------------------------------------------------------------------
    def _skip(self, trial, name: str, why: str, kind: str) -> str:
        """Record a drawn setting that is not trained (state fail, ``skipped``), say so in one line."""
        trial.set_user_attr("skipped", kind)
        trial.set_user_attr("seconds", 0.0)
        self.studies[name].tell(trial, state=self.optuna.trial.TrialState.FAIL)
        console.print(f"  [yellow]skipped: {why}")
        return "skipped" if kind == "time" else f"skipped ({kind})"

    def _precheck(self, name: str, trial, cfg, left: float) -> str | None:
        """Why a drawn setting must not start (memory, time), after saying so; None to go on."""
        from ncf.models import get_model_class

        params = cfg.model_params(get_model_class(name))
        need, have = memory_needed(name, self.dataset, params), available_memory()
        if need is not None and have is not None and need > have:
            self.memory_skips[name] = self.memory_skips.get(name, 0) + 1
            return self._skip(trial, name, f"{name} would need about {need / 2**30:.1f} GiB, "
                              f"{have / 2**30:.1f} GiB are available", "memory")
        if left <= 0:
            return self._skip(trial, name, f"no time left for {name} and its validation score "
                              f"(about {self.eval_estimate():.0f} s)", "time")
        if not is_sgd(name):
            est = self.estimate(name, params)
            if est is not None and est > left:
                return self._skip(trial, name, f"{name} would take about {est:.0f} s, {left:.0f} s are left",
                                  "time")
        return None

    def run_trial(self, name: str, deadline: float) -> str:
        """One trial of ``name`` that ends by ``deadline`` (``time.monotonic()``); returns its
        outcome: complete, pruned, failed (also: stopped at the deadline), or skipped (not started:
        it would not fit the memory or the time left)."""
        from ncf.compare import trial_config
        from ncf.train.run import train

        optuna, study = self.optuna, self.studies[name]
        trial = study.ask()
        params = space.suggest(name, trial)
        base = self.base if is_sgd(name) else {"threads": self.base["threads"], "seed": self.seed}
        cfg = trial_config(name, params, base)
        run = self.out / "runs" / name / f"t{trial.number:03d}"
        if run.exists():
            shutil.rmtree(run)  # a trial number is never reused; this is the leftover of a crash
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("params", json.loads(json.dumps(params)))
        left = max(0.0, deadline - time.monotonic() - self.eval_estimate())
        console.print(f"[bold]{name}[/] trial {trial.number}: {params or '(no hyperparameters)'}  ({left:.0f} s left)")
        skipped = self._precheck(name, trial, cfg, left)
        if skipped:
            return skipped
        # every fit stops there (ncf.deadline; the Trainer's steps), early enough for its validation score
        cfg.deadline = deadline - self.eval_estimate()

        def on_epoch(record: dict) -> bool:
            valid = record.get("valid") or {}
            v = valid.get(self.metric, valid.get(cfg.monitor))  # topk: pruned on the Trainer's own monitor
            if not self.progress:  # the Trainer prints its epochs only with progress on
                console.print(f"  epoch {record['epoch']}: valid {cfg.monitor} "
                              f"{valid.get(cfg.monitor, float('nan')):.4f}  ({record.get('seconds', 0.0):.0f} s)")
            if v is not None:
                trial.report(v, record["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned()
            # the budget's end (before another epoch like this one would pass it): keep the best epoch so far
            return time.monotonic() + record.get("seconds", 0.0) >= cfg.deadline

        t0 = time.monotonic()
        try:
            # a tune never resumes a trial: a pruned or failed one leaves no resumable state behind
            summary = train(self.data_cfg, cfg, run, dataset=self.search_data, progress=self.progress,
                            on_epoch=on_epoch, resumable=False)
            t_eval = time.monotonic()
            trial.set_user_attr("fit_seconds", t_eval - t0)
            value = valid_score(run, self.dataset, self.protocol, self.metric, summary)
            if self.protocol != "sampled":
                self.eval_seconds = time.monotonic() - t_eval
        except optuna.TrialPruned:
            _drop_weights(run)
            trial.set_user_attr("seconds", time.monotonic() - t0)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            console.print(f"  pruned after {time.monotonic() - t0:.0f} s (below the median of earlier {name} trials)")
            return "pruned"
        except TrialTimeout as e:
            _drop_weights(run)
            trial.set_user_attr("seconds", time.monotonic() - t0)
            trial.set_user_attr("timeout", str(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            console.print(f"  [yellow]stopped after {time.monotonic() - t0:.0f} s: {e}")
            return "failed"
        except (ValueError, RuntimeError, MemoryError, NcfError) as e:
            _drop_weights(run)
            trial.set_user_attr("seconds", time.monotonic() - t0)
            trial.set_user_attr("error", str(e)[:500])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            console.print(f"  [red]failed: {e}")
            return "failed"
        (run / "state.safetensors").unlink(missing_ok=True)  # finished: the resumable state is dead weight
        trial.set_user_attr("seconds", time.monotonic() - t0)
        trial.set_user_attr("best_epoch", summary.get("best_epoch"))
        if summary.get("stopped"):
            trial.set_user_attr("stopped", summary["stopped"])
        if summary.get("epochs_run"):
            trial.set_user_attr("epoch_seconds", (time.monotonic() - t0) / summary["epochs_run"])
        prev = self.best(name)
        study.tell(trial, value)
        if prev is not None and value <= prev.value:
            _drop_weights(run)  # only each model's best run keeps its weights (ensemble members, DIR/best)
        elif prev is not None:
            _drop_weights(Path(prev.user_attrs["run"]))
        console.print(f"  valid {self.protocol} {self.metric} {value:.4f}  ({time.monotonic() - t0:.0f} s)"
                      + ("  *" if prev is None or value > prev.value else ""))
        return "complete"

    def eval_estimate(self) -> float:
        """Seconds the validation score of a trial takes after its fit (topk and full rank every
        item: minutes on Gowalla-sized data; sampled is part of the fit): the last one measured,
        before any a probe (:func:`eval_probe_seconds`)."""
        if self.protocol == "sampled":
            return 0.0
        if self.eval_seconds is None:
            self.eval_seconds = eval_probe_seconds(self.dataset, self.protocol, self.k)
        return self.eval_seconds

    # -- the schedule ------------------------------------------------------------------
    def estimate(self, name: str, params: dict[str, Any] | None = None) -> float | None:
        """Seconds a fitted model's trial of ``params`` takes about: its earlier trials' seconds
        per unit of ``space.cost`` times this one's cost (the slowest such rate: a one-shot fit
        cannot be stopped, so the estimate errs long); before any, EASE's probe (None for the
        others: their first trial starts, see :meth:`_next`). ``params`` None: the cheapest
        earlier trial (what any next trial needs at least)."""
        done = [t for t in self._done(name) if t.user_attrs.get("seconds")]
        if not done:
            return ease_probe_seconds(self.dataset.n_items) if name == "ease" and params is not None else None
        if params is None:
            return min(t.user_attrs["seconds"] for t in done)
        rate = max(t.user_attrs["seconds"] / space.cost(name, self._model_params(name, t)) for t in done)
        return rate * space.cost(name, params)

    def _model_params(self, name: str, trial) -> dict[str, Any]:
        """The model hyperparameters a finished trial ran with (from its run's trial dict)."""
        from ncf.compare import trial_config
        from ncf.models import get_model_class

        cfg = trial_config(name, trial.user_attrs.get("params") or {}, {})
        return cfg.model_params(get_model_class(name))

    def _sgd_estimate(self, name: str) -> float:
        """Seconds an SGD model's next trial needs at least: its fastest epoch so far (it can stop
        after any epoch)."""
        secs = [t.user_attrs["epoch_seconds"] for t in self._done(name) if "epoch_seconds" in t.user_attrs]
        return min(secs) if secs else 0.0

    def _typical(self) -> float:
        """Mean seconds of the trials finished so far, any model (0 before the first)."""
        secs = [t.user_attrs.get("seconds", 0.0) for m in self.models for t in self._done(m)]
        return sum(secs) / len(secs) if secs else 0.0

    def _tries(self, name: str) -> int:
        """Trials of ``name`` that ended without a score (failed, stopped, skipped)."""
        return sum(t.state == self.optuna.trial.TrialState.FAIL for t in self.studies[name].get_trials(deepcopy=False))

    def _next(self, deadline: float, exhausted: set[str]) -> str | None:
        left = deadline - time.monotonic()
        candidates = []
        for m in self.models:
            if m in exhausted:
                continue
            if self.memory_skips.get(m, 0) >= MEMORY_SKIPS:
                exhausted.add(m)
                continue
            n = len(self._done(m))
            if m == "pop" and n:
                continue
            need = (self._sgd_estimate(m) if is_sgd(m) else self.estimate(m)) if n else None
            if need is not None and need > left:
                exhausted.add(m)
                continue
            if n == 0:
                if self._tries(m) >= FIRST_TRIES:
                    exhausted.add(m)  # failed or skipped again and again: no more turns
                    continue
                if left < self._typical():
                    exhausted.add(m)  # no estimate of its own: not started with less than a typical trial's time
                    continue
                return m  # every model's default trial first
            candidates.append(m)
        scored = {m: self.best(m).value for m in candidates if self.best(m) is not None}
        if not scored:
            return None
        top = max(scored.values())
        keep = [m for m in candidates if m in scored and (len(self._done(m)) < 3 or scored[m] >= top - DROP_MARGIN)]
        return choose({m: (self.seconds(m), [t.value for t in sorted(self._done(m), key=lambda t: t.number)])
                       for m in keep})

    def run(self) -> dict[str, Any]:
        start = time.monotonic()
        before = self.spent()
        if before:
            console.print(f"resuming {self.out / 'study.sqlite3'}: {before:.0f} s of the budget already spent")
        deadline = start + self.budget - before
        self.deadline = deadline
        reserve = min(max(ENSEMBLE_RESERVE * self.budget, 20.0), 300.0, self.budget / 2) if self.ensemble else 0.0
        exhausted: set[str] = set()
        while True:
            stop = deadline - reserve - self.refit_reserve()  # what the refit of the best runs so far needs
            if time.monotonic() >= stop:
                break
            name = self._next(stop, exhausted)
            if name is None:
                break
            if self.run_trial(name, stop) == "skipped":
                exhausted.add(name)  # a drawn setting would not finish in time: the model's turns are over
        if self.ensemble:  # requested: runs even where the last trial ate into its reserve
            self.run_ensemble(deadline)
        from ncf.tune.report import finish

        return finish(self, time.monotonic() - start + before)

    def run_ensemble(self, deadline: float | None = None) -> None:
        """Blend the best runs of up to three other models; the blend is one more trial, that
        stops at ``deadline`` (``time.monotonic()``) where it has not finished."""
        from ncf.config import TrainConfig
        from ncf.train.run import train

        bests = sorted((b for m in self.models if m != "pop" and (b := self.best(m)) is not None),
                       key=lambda t: -t.value)[:3]
        if len(bests) < 2:
            console.print("ensemble: fewer than two tuned models to blend, skipped")
            return
        members = [t.user_attrs["run"] for t in bests]
        study = self.studies["ensemble"]
        if any(t.user_attrs.get("members") == members for t in self._done("ensemble")):
            return  # resumed: this blend exists already
        trial = study.ask()
        run = self.out / "runs" / "ensemble" / f"t{trial.number:03d}"
        if run.exists():
            shutil.rmtree(run)
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("members", members)
        trial.set_user_attr("params", {"members": members})
        console.print(f"[bold]ensemble[/] of {', '.join(members)}")
        # the blend's own choice of weights: sampled, or among every unseen item (topk too), on NDCG@10
        select = "sampled" if self.protocol == "sampled" else "full"
        metric = self.metric if self.protocol != "topk" else "ndcg@10"
        cfg = TrainConfig(model="ensemble", seed=self.seed, threads=self.base["threads"],
                          params={"members": members, "select": select, "metric": metric}, deadline=deadline)
        t0 = time.monotonic()
        try:
            summary = train(self.data_cfg, cfg, run, dataset=self.search_data, progress=self.progress)
            value = valid_score(run, self.dataset, self.protocol, self.metric, summary)
        except (ValueError, RuntimeError, MemoryError, NcfError) as e:
            trial.set_user_attr("error", str(e)[:500])
            study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            console.print(f"  [red]failed: {e}")
            return
        trial.set_user_attr("seconds", time.monotonic() - t0)
        study.tell(trial, value)
        weights = json.loads((run / "config.json").read_text())["model_params"]["weights"]
        console.print(f"  weights {weights}  valid {self.protocol} {self.metric} {value:.4f}  "
                      f"({time.monotonic() - t0:.0f} s)")

    # -- refit on train + validation ----------------------------------------------------
    def _refit_seconds(self, name: str, trial) -> float:
        """Seconds a refit of ``trial`` takes about (:meth:`_fit_seconds`; an ensemble: its members'
        and its own)."""
        if name == "ensemble":  # its members' refits and the blend
            members = [Path(m) for m in trial.user_attrs.get("members", [])]
            return sum(self._refit_seconds(m, b) for m in self.models if (b := self.best(m)) is not None
                       and Path(b.user_attrs["run"]) in members) + trial.user_attrs.get("seconds", 0.0)
        return self._fit_seconds(name, trial)

    def _fit_seconds(self, name: str, trial) -> float:
        """Seconds a refit of one model's ``trial`` takes about: its fit's, an SGD trial's for its
        best epoch count, scaled by the share of interactions the refit adds (validation)."""
        a = trial.user_attrs
        grow = (self.dataset.train.nnz + len(self.dataset.valid)) / max(self.dataset.train.nnz, 1)
        if is_sgd(name) and a.get("epoch_seconds") and a.get("best_epoch"):
            return grow * a["epoch_seconds"] * a["best_epoch"]
        return grow * a.get("fit_seconds", a.get("seconds", 0.0))  # the fit: a refit is not scored on validation

    def refit_reserve(self) -> float:
        """Seconds the search leaves for the refit: the best runs the ensemble would blend (else the best)."""
        if self.full is None:
            return 0.0
        bests = sorted(((m, b) for m in self.models if m != "pop" and (b := self.best(m)) is not None),
                       key=lambda mb: -mb[1].value)[:3 if self.ensemble else 1]
        return sum(self._refit_seconds(m, b) for m, b in bests)

    def refit(self, name: str, trial) -> dict[str, Any] | None:
        """The chosen run trained again on train + validation (:func:`refit_run`) into DIR/runs/refit;
        what summary.json says of it. None (said in one line) where the budget's end is set and the
        refit would run past it (a search whose first trial took the whole budget): DIR/best is
        then the choice as trained; rerunning the tune with a larger budget refits it."""
        run, root = Path(trial.user_attrs["run"]), self.out / "runs" / "refit"
        done = root / "refit.json"  # written once a refit is complete: a rerun of a finished tune keeps it
        if done.exists():
            old = json.loads(done.read_text())
            if old.get("from") == str(run) and (Path(old["run"]) / "summary.json").exists():
                console.print(f"refit of {run} on train + validation: kept from an earlier session ({old['run']})")
                return old
        need = self._refit_seconds(name, trial)
        # the search kept a reserve for it; the last trial may have eaten a little of it (REFIT_SLACK)
        slack = max(REFIT_SLACK * self.budget, 2.0)
        if self.deadline is not None and time.monotonic() + need > self.deadline + slack:
            console.print(f"[yellow]not refitting {run} on train + validation: it would take about {need:.0f} s, "
                          f"{max(0.0, self.deadline - time.monotonic()):.0f} s of the budget are left (DIR/best is "
                          "the choice as trained; rerun with a larger --time-budget to refit it)")
            return None
        console.print(f"[bold]refit[/] of {run} on train + validation")
        t0 = time.monotonic()
        out = refit_run(run, root, self.full_cfg, self.full, self.progress)
        console.print(f"  refitted in {time.monotonic() - t0:.0f} s")
        result = {"from": str(run), "run": str(out), "seconds": round(time.monotonic() - t0, 1)}
        atomic_write_json(done, result)
        return result


def refit_config(src: Path, **override) -> dict[str, Any]:
    """The TrainConfig (as a dict) that trains run ``src``'s choice again on train + validation:
    its settings (with ``override``), for the epoch count validation chose where it chose one
    (``best_epoch`` in its summary.json): an SGD model's ``epochs``, or the ``epochs`` parameter
    of a model with its own epoch loop (one that reports ``stats["best_epoch"]``: sasrec,
    lightgcn...). Without validation such a fit runs exactly that many epochs, keeping the last."""
    cfg = json.loads((src / "config.json").read_text())
    tc = {**cfg["train"], **override}
    best = json.loads((src / "summary.json").read_text()).get("best_epoch")
    if best:
        if is_sgd(cfg["model"]):
            tc["epochs"] = int(best)
        elif "epochs" in (cfg.get("model_params") or {}):
            tc["params"] = {**tc.get("params", {}), "epochs": int(best)}
    return tc


def refit_run(run: Path, root: Path, full_cfg: DataConfig, full: Dataset, progress: bool = False,
              with_test: bool = False) -> Path:
    """``run`` trained again with its settings on ``full`` (train + validation; the same test
    holdout) into ``root`` (:func:`refit_config`: for the epoch count validation chose, keeping
    the last); an ensemble as its members with a weight so (``root/mK-MODEL``), blended with the
    weights it chose on validation (``root/ensemble``). Test is not read (``ncf tune`` reads it
    once, for DIR/best) unless ``with_test``. Returns the new run directory."""
    from ncf.config import TrainConfig
    from ncf.train.run import train

    if root.exists():
        shutil.rmtree(root)  # what an interrupted or another refit left
    data = full if with_test else full.without_test()

    def again(src: Path, out: Path, **override) -> Path:
        train(full_cfg, TrainConfig.from_dict(refit_config(src, **override)), out, dataset=data, progress=progress,
              resumable=False)
        return out

    cfg = json.loads((run / "config.json").read_text())
    if cfg["model"] != "ensemble":
        return again(run, root / cfg["model"])
    mp = cfg["model_params"]
    keep = [(k, spec, w) for k, (spec, w) in enumerate(zip(mp["members"], mp["weights"], strict=True)) if w > 0]
    members = [str(again(Path(spec["source"]), root / f"m{k}-{spec['model']}")) for k, spec, _ in keep]
    params = {**cfg["train"].get("params", {}), "members": members, "weights": [w for *_, w in keep]}
    return again(run, root / "ensemble", params=params)


def tune(data_cfg: DataConfig, out: Path, time_budget: float, models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
         protocol: str | None = None, **kw) -> dict[str, Any]:
    """Run ``ncf tune`` (see the module docstring); returns what ``DIR/summary.json`` holds.
    ``out`` is new, empty or a study to continue (never a run or other files: :mod:`ncf.outputs`),
    written by one process at a time."""
    from ncf.outputs import OutputLock, prepare_output_dir

    with OutputLock(out):
        prepare_output_dir(out, "study", resume=True)
        return Tuner(data_cfg, out, time_budget, list(models), protocol, **kw).run()
