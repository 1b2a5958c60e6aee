"""``ncf compare``: baselines and neural models tuned on validation, compared on test under
both protocols, with every pair whose order the two protocols disagree on marked.

For each model, at most ``tune_budget`` configurations are trained with
:func:`ncf.train.run.train`, proposed by ``ncf tune``'s search (:mod:`ncf.tune.space`: the
model's default first, then Optuna's TPE sampler, seeded, told each validation score) where
Optuna is installed; otherwise (or with explicit ``grids``) the grid's first entry (``GRIDS``)
and a seeded random draw of the others. The configuration with
the best **validation** sampled NDCG@10 is kept (for SGD models, at its best epoch: early
stopping also looks at validation only); its test metrics under the ``sampled`` (1 + 99) and
``full`` (every unseen item) protocols are reported. Test never chooses anything.

Krichene & Rendle (KDD 2020) show that sampled metrics can order two models differently
from the full ranking; :func:`reversed_pairs` lists every such pair in our own results.

Output directory::

    results.json   {"<model>": {"sampled": {...}, "full": {...}, "train_seconds": s, "params": {...},
                                 "reversed_with": {"hr@10": [...], "ndcg@10": [...]}}, ...}
    results.md     the same as tables, reversed pairs listed
    results.png    bar charts of both protocols
    tuning.json    every configuration tried, with its validation metrics
    runs/MODEL/tK  the run directory of each trial (weights kept for the selected one only)

Rerunning the same command reuses the trials already finished.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ncf.checkpoint import atomic_write_json
from ncf.config import TrainConfig
from ncf.console import console
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.split import Dataset
from ncf.errors import ConfigError
from ncf.models import MODELS, get_model_class
from ncf.outputs import OutputLock, atomic_write_text, mark, prepare_output_dir, save_figure


def _grid(**axes) -> list[dict[str, Any]]:
    """Cartesian product of the axes; each axis lists its default value first."""
    keys = list(axes)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*axes.values())]


# The search per model; the first entry is the default configuration (always tried).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "itemknn": _grid(k=[100, 50, 200, 400, 20], shrink=[10.0, 0.0, 50.0, 100.0]),
    "ease": _grid(l2=[500.0, 100.0, 200.0, 1000.0, 2000.0, 5000.0]),
    # implicit's objective (alpha, plain L2): the model's default is Rendle et al.'s, on another scale
    "ials": _grid(factors=[64, 32, 128], regularization=[0.01, 0.1, 1.0], alpha=[10.0, 1.0, 40.0],
                  unobserved_weight=[0.0], frequency_scaling=[0.0]),
    "bpr": _grid(factors=[32, 16, 64], l2=[1e-5, 0.0, 1e-4], lr=[0.005, 0.001]),
    "gmf": _grid(factors=[16, 8, 32, 64], lr=[0.005, 0.001]),
    "mlp": _grid(layers=[(64, 32, 16, 8), (128, 64, 32, 16), (32, 16, 8)], lr=[0.005, 0.001]),
    "neumf": _grid(factors=[16, 8, 32], layers=[(64, 32, 16, 8), (128, 64, 32, 16)], lr=[0.005, 0.001]),
    "sasrec": _grid(lr=[0.005, 0.001], dropout=[0.2, 0.5]),
    "gru4rec": _grid(lr=[0.005, 0.001], dropout=[0.2, 0.5]),
}
SELECT_BY = "ndcg@10"  # validation, sampled protocol (the Trainer's monitor)
SAMPLED_KEYS = ("hr@10", "ndcg@10")
FULL_KEYS = ("hr@10", "ndcg@10", "recall@10")
TRAIN_KEYS = ("lr", "epochs", "neg", "batch_size", "loss", "optimizer")  # reported for SGD models

# Published sampled HR@10 / NDCG@10 on the NCF ML-1M split (``ncf-ml-1m``): TopPop and
# ItemKNN from Dacrema et al. (RecSys 2019); MLP and NeuMF from He et al. (WWW 2017),
# factors 8..64, NeuMF with and without pre-training.
PUBLISHED = {
    "ncf-ml-1m": {
        "pop": "0.453 / 0.254",
        "itemknn": "0.660 / 0.390",
        "mlp": "0.671-0.702 / 0.399-0.426",
        "neumf": "0.684-0.730 / 0.403-0.447",
    },
}


def parse_models(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ConfigError("--models needs at least one model name")
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(sorted(MODELS))})")
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise ConfigError(f"model(s) listed twice: {', '.join(dup)}")
    return names


def choose_trials(grid: list[dict[str, Any]], budget: int, seed: int = 0) -> list[dict[str, Any]]:
    """At most ``budget`` configurations: the first (default) and a seeded random draw of the rest."""
    if budget < 1:
        raise ConfigError(f"--tune-budget must be >= 1, got {budget}")
    if len(grid) <= budget:
        return list(grid)
    rest = np.random.default_rng(seed).choice(np.arange(1, len(grid)), size=budget - 1, replace=False)
    return [grid[0]] + [grid[i] for i in sorted(rest.tolist())]


class _Fixed(list):
    """Configurations decided in advance (a given grid): the validation score changes nothing."""

    def tell(self, value) -> None:
        pass


def proposals(name: str, grid: list[dict[str, Any]] | None, budget: int, seed: int = 0):
    """The configurations ``tune_model`` tries, one at a time, told each validation score:
    an explicit ``grid`` is drawn from as before (:func:`choose_trials`); otherwise, where
    Optuna is installed and the model has a search space, ``ncf tune``'s search
    (:class:`ncf.tune.space.Proposals`: the default first, then TPE, seeded); else ``GRIDS``."""
    if grid is None:
        try:
            from ncf.tune.space import SPACES, Proposals

            if name in SPACES:
                return Proposals(name, budget, seed)
        except ImportError:  # no optuna: the random grid
            pass
    return _Fixed(choose_trials(grid if grid is not None else GRIDS.get(name, [{}]), budget, seed))


def trial_config(name: str, trial: dict[str, Any], base: dict[str, Any]) -> TrainConfig:
    """A TrainConfig for one trial: a key the model takes as its own hyperparameter (and
    not from a TrainConfig field) goes to ``params``; the rest are TrainConfig fields."""
    cls = get_model_class(name)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg: dict[str, Any] = {"model": name, "loss": getattr(cls, "default_loss", TrainConfig.loss), **base}
    params: dict[str, Any] = {}
    for k, v in trial.items():
        if k in cls.params and k not in cls.config_fields:
            params[k] = v
        elif k in fields:
            cfg[k] = v
        else:
            raise ConfigError(f"grid key {k!r} is neither a {name} hyperparameter nor a training setting")
    return TrainConfig.from_dict({**cfg, "params": params})


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=list))


def _run_trial(data_cfg: DataConfig, cfg: TrainConfig, dataset: Dataset, out: Path, progress: bool) -> dict:
    """Train one configuration into ``out`` (or reuse a finished identical run there)."""
    from ncf.train.run import train

    cfg_file, summary_file = out / "config.json", out / "summary.json"
    if summary_file.exists() and cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        try:  # a TrainConfig field added since that run counts at its default
            old_train = _jsonable(TrainConfig.from_dict(old.get("train") or {}).to_dict())
        except (TypeError, ValueError):
            old_train = None
        # runs store their resolved config (auto batch size / lr filled in): compare like with like
        if old_train == _jsonable(cfg.resolved(dataset.train.nnz).to_dict()) and old.get("data") == data_cfg.to_dict():
            return json.loads(summary_file.read_text())
    if out.exists():
        shutil.rmtree(out)
    return train(data_cfg, cfg, out, dataset=dataset, progress=progress, overwrite=True)  # a stale partial too


def _drop_weights(run: Path) -> None:
    for f in ("model.safetensors", "state.safetensors", "train.safetensors"):
        (run / f).unlink(missing_ok=True)


def tune_model(name: str, data_cfg: DataConfig, dataset: Dataset, out: Path, budget: int, base: dict[str, Any],
               seed: int = 0, progress: bool = True, grid: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train up to ``budget`` configurations of ``name``; keep the best on validation."""
    trials = proposals(name, grid, budget, seed)
    cls = get_model_class(name)
    records = []
    for t, trial in enumerate(trials):
        cfg = trial_config(name, trial, base if cls.trainable else {k: v for k, v in base.items() if k == "threads"})
        run = out / "runs" / name / f"t{t}"
        console.print(f"[bold]{name}[/] trial {t + 1}/{len(trials)} {trial or '(no hyperparameters)'}")
        t0 = time.perf_counter()
        summary = _run_trial(data_cfg, cfg, dataset, run, progress)
        valid = summary.get("valid") or summary.get("valid_topk") or {}  # a given split: the top-k protocol
        records.append({"trial": t, "config": trial, "run": str(run), "valid": valid,
                        "best_epoch": summary.get("best_epoch"), "epochs_run": summary.get("epochs_run"),
                        "train_seconds": summary["train_seconds"], "summary": summary})
        trials.tell(valid.get(SELECT_BY))
        console.print(f"  valid sampled hr@10 {valid.get('hr@10', float('nan')):.4f} "
                      f"ndcg@10 {valid.get('ndcg@10', float('nan')):.4f}  ({time.perf_counter() - t0:.1f}s)")
    best = max(records, key=lambda r: (r["valid"].get(SELECT_BY, -np.inf), -r["trial"]))
    for r in records:
        if r is not best:
            _drop_weights(Path(r["run"]))
    run_cfg = json.loads((Path(best["run"]) / "config.json").read_text())
    params = dict(run_cfg.get("model_params", {}))
    if cls.trainable:
        params.update({k: run_cfg["train"][k] for k in TRAIN_KEYS})
        params["best_epoch"] = best["best_epoch"]
    s = best["summary"]
    return {
        "sampled": {k: s["test"][k] for k in SAMPLED_KEYS},
        "full": {k: s["test_full"][k] for k in FULL_KEYS},
        "train_seconds": best["train_seconds"],
        "params": params,
        "_tuning": {"selected": best["trial"], "run": best["run"],
                    "train_seconds_all_trials": sum(r["train_seconds"] for r in records),
                    "trials": [{k: v for k, v in r.items() if k != "summary"} for r in records]},
    }


def reversed_pairs(results: dict[str, dict], metric: str) -> list[tuple[str, str]]:
    """Pairs (a, b), in ``results`` order, that the sampled and the full protocol order
    strictly oppositely on ``metric`` (a tie in either protocol is no reversal)."""
    out = []
    for a, b in itertools.combinations(results, 2):
        ds = results[a]["sampled"][metric] - results[b]["sampled"][metric]
        df = results[a]["full"][metric] - results[b]["full"][metric]
        if ds * df < 0:
            out.append((a, b))
    return out


def mark_reversals(results: dict[str, dict]) -> dict[str, list[tuple[str, str]]]:
    pairs = {m: reversed_pairs(results, m) for m in SAMPLED_KEYS}
    for name, r in results.items():
        r["reversed_with"] = {m: [b if a == name else a for a, b in ps if name in (a, b)] for m, ps in pairs.items()}
    return pairs


def _ranks(results: dict[str, dict], protocol: str, metric: str) -> dict[str, int]:
    order = sorted(results, key=lambda n: -results[n][protocol][metric])
    return {n: order.index(n) + 1 for n in results}


def results_markdown(results: dict[str, dict], pairs: dict[str, list], dataset: str, command: str | None,
                     budget: int, sgd_budget: int | None = None, n_test: int | None = None,
                     candidates: str = "1 + 99") -> str:
    """``candidates``: what the sampled protocol ranks each held-out item among (fewer than
    ``1 + 99`` on a small catalogue; :func:`ncf.train.run.candidates_label`)."""
    pub = PUBLISHED.get(dataset, {})
    rs, rf = _ranks(results, "sampled", "hr@10"), _ranks(results, "full", "hr@10")
    lines = [f"# Comparison on `{dataset}`", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        f"Each model: at most {budget} configuration(s) of its grid"
        + (f" ({sgd_budget} for the SGD-trained ones)" if sgd_budget not in (None, budget) else "")
        + f", the one with the best validation "
        f"sampled {SELECT_BY.upper()} kept; test metrics below. *sampled*: the held-out item among "
        f"itself + {candidates.split(' + ', 1)[1]} negatives; *full*: among every item the user has not seen. "
        "Ranks by HR@10."
        + (f" {n_test} test users: one hit more or less moves HR@10 by {1 / n_test:.4f}, so small gaps "
           "(and the reversals they cause) can be noise." if n_test else ""), "",
        "| model | sampled HR@10 | sampled NDCG@10 | full HR@10 | full NDCG@10 | full Recall@10 "
        "| rank sampled | rank full | train s | params |" + (" published sampled HR / NDCG |" if pub else ""),
        "|---" * (10 + bool(pub)) + "|",
    ]
    for n, r in results.items():
        s, f = r["sampled"], r["full"]
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        row = (f"| {n} | {s['hr@10']:.4f} | {s['ndcg@10']:.4f} | {f['hr@10']:.4f} | {f['ndcg@10']:.4f} "
               f"| {f['recall@10']:.4f} | {rs[n]} | {rf[n]} | {r['train_seconds']:.1f} | {params} |")
        lines.append(row + (f" {pub.get(n, '-')} |" if pub else ""))
    lines += ["", "## Pairs ordered differently by the sampled and the full protocol", "",
              "Krichene & Rendle (KDD 2020): a sampled metric need not order models as the full ranking does. "
              "Every pair of models above whose order flips between the two protocols:", ""]
    if not any(pairs.values()):
        lines.append("None: both protocols order every pair the same way, on HR@10 and on NDCG@10.")
    else:
        lines += ["| pair | metric | sampled | full |", "|---|---|---|---|"]
        for metric, ps in pairs.items():
            for a, b in ps:
                sa, sb = results[a]["sampled"][metric], results[b]["sampled"][metric]
                fa, fb = results[a]["full"][metric], results[b]["full"][metric]
                lines.append(f"| {a} vs {b} | {metric.upper()} | {a} {sa:.4f} {'>' if sa > sb else '<'} {b} {sb:.4f} "
                             f"| {a} {fa:.4f} {'>' if fa > fb else '<'} {b} {fb:.4f} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, dict], path: Path, title: str, candidates: str = "1 + 99") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.9 * len(names) + 2), 7.5))
    for ax, protocol in zip(axes, ("sampled", "full"), strict=True):
        for j, metric in enumerate(("hr@10", "ndcg@10")):
            vals = [results[n][protocol][metric] for n in names]
            bars = ax.bar(x + (j - 0.5) * 0.4, vals, 0.4, label=metric.upper())
            ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        ax.set_xticks(x, names, rotation=30)
        shown = f" ({candidates} candidates)" if protocol == "sampled" else " (all unseen)"
        ax.set_title(f"{protocol} protocol{shown}")
        ax.set_ylim(0, max(results[n][protocol]["hr@10"] for n in names) * 1.3 or 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def compare(data_cfg: DataConfig, models: list[str], out: Path, tune_budget: int = 4, epochs: int = 20,
            patience: int = 3, seed: int = 0, threads: int = 0, device: str = "auto",
            dataset: Dataset | None = None, progress: bool = True, command: str | None = None,
            grids: dict[str, list[dict[str, Any]]] | None = None, base: dict[str, Any] | None = None,
            sgd_budget: int | None = None) -> dict:
    """Tune, train and evaluate every model in ``models``; write results to ``out``.
    ``sgd_budget`` (default: ``tune_budget``) bounds the trials of SGD-trained models alone."""
    sgd_budget = tune_budget if sgd_budget is None else sgd_budget
    for flag, b in (("--tune-budget", tune_budget), ("--sgd-budget", sgd_budget)):
        if b < 1:
            raise ConfigError(f"{flag} must be >= 1, got {b}")
    for m in models:
        get_model_class(m)  # unknown names and missing optional dependencies fail before any training
    out = Path(out)
    with OutputLock(out):  # one writer at a time; rerun on the same directory to reuse its finished runs
        prepare_output_dir(out, "comparison", resume=True)
        return _compare(data_cfg, models, out, tune_budget, sgd_budget, epochs, patience, seed, threads, device,
                        dataset, progress, command, grids, base)


def _compare(data_cfg, models, out, tune_budget, sgd_budget, epochs, patience, seed, threads, device, dataset,
             progress, command, grids, base) -> dict:
    dataset = dataset or load_dataset(data_cfg)
    if dataset.valid is None or not len(dataset.valid):
        raise ConfigError("compare tunes on a validation holdout, and this dataset has none (drop --no-valid)")
    mark(out, "comparison")  # what the directory is, before its first run
    base = {"epochs": epochs, "patience": patience, "seed": seed, "threads": threads, "device": device,
            **(base or {})}
    results: dict[str, dict] = {}
    tuning: dict[str, dict] = {}
    for i, name in enumerate(models):
        console.rule(f"[{i + 1}/{len(models)}] {name}")
        grid = (grids or {}).get(name)
        budget = sgd_budget if get_model_class(name).trainable else tune_budget
        r = tune_model(name, data_cfg, dataset, out, budget, base, seed, progress, grid)
        tuning[name] = r.pop("_tuning")
        results[name] = r
    pairs = mark_reversals(results)
    atomic_write_json(out / "results.json", results)
    atomic_write_json(out / "tuning.json", {"dataset": dataset.name, "budget": tune_budget,
                                            "sgd_budget": sgd_budget, "select_by":
                                            f"valid sampled {SELECT_BY}", "base": base, "models": tuning})
    from ncf.train.run import candidates_label

    sizes = candidates_label(dataset.test)
    atomic_write_text(out / "results.md", results_markdown(results, pairs, dataset.name, command, tune_budget,
                                                           sgd_budget, len(dataset.test), sizes))
    plot_results(results, out / "results.png", f"{dataset.name}: test HR@10 / NDCG@10, tuned on validation", sizes)
    return results
