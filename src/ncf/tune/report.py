"""What ``ncf tune`` writes at the end: the choice (on validation), DIR/best, summary.json,
trials.csv and tune.png."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from ncf.checkpoint import atomic_write_json, load_model
from ncf.console import console
from ncf.errors import ConfigError
from ncf.outputs import atomic_write, save_figure


def trial_rows(tuner) -> list[dict[str, Any]]:
    """Every trial of every model, ordered by start time, with its elapsed time since the first
    trial started counted as tune time (gaps between sessions left out)."""
    rows = []
    for name, study in tuner.studies.items():
        for t in study.get_trials(deepcopy=False):
            if t.datetime_start is None:
                continue
            secs = ((t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete
                    else t.user_attrs.get("seconds", 0.0))
            rows.append({"model": name, "trial": t.number, "state": t.state.name.lower(),
                         "value": t.value, "seconds": round(secs, 2), "best_epoch": t.user_attrs.get("best_epoch"),
                         "params": json.dumps(t.user_attrs.get("params", t.params), sort_keys=True),
                         "run": t.user_attrs.get("run", ""), "_start": t.datetime_start})
    rows.sort(key=lambda r: r["_start"])
    clock = 0.0
    for r in rows:
        clock += r["seconds"]
        r["elapsed"] = round(clock, 2)
        del r["_start"]
    return rows


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = ["model", "trial", "state", "value", "seconds", "elapsed", "best_epoch", "params", "run"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c) for c in cols})

    atomic_write(path, write)


def plot_trials(rows: list[dict[str, Any]], path: Path, title: str, ylabel: str) -> None:
    """Each completed trial's validation score at the tune time it finished, per model, with
    each model's best so far as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    end = max((r["elapsed"] for r in rows), default=0.0)
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["elapsed"], r["value"]) for r in rows if r["model"] == name and r["state"] == "complete"]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        best, run_best = [], -float("inf")
        for y in ys:
            run_best = max(run_best, y)
            best.append(run_best)
        line = ax.step([*xs, end], [*best, best[-1]], where="post", label=name)[0]  # best so far, to the end
        ax.scatter(xs, ys, s=14, color=line.get_color(), alpha=0.6)
    pruned = [r["elapsed"] for r in rows if r["state"] == "pruned"]
    if pruned:
        ax.scatter(pruned, [ax.get_ylim()[0]] * len(pruned), marker="x", color="grey", label="pruned")
    ax.set_xlabel("tune time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def finish(tuner, elapsed: float) -> dict[str, Any]:
    """Choose the best trial on validation, copy it (refitted where asked) to DIR/best, read the
    test holdout once, for DIR/best, and write every report file."""
    out, ds = tuner.out, tuner.dataset
    rows = trial_rows(tuner)
    write_trials_csv(rows, out / "trials.csv")
    plot_trials(rows, out / "tune.png", f"ncf tune on {ds.name}",
                f"validation {tuner.protocol} {tuner.metric}")
    per_model, chosen = {}, None
    for name in tuner.studies:
        b = tuner.best(name)
        trials = [t for t in tuner.studies[name].get_trials(deepcopy=False) if t.datetime_start is not None]
        states = [t.state.name.lower() for t in trials]
        if b is None:
            if trials:
                per_model[name] = {"trials": len(states), "failed": states.count("fail"), "valid_score": None,
                                   "why": _why_none(trials)}
            continue
        run = Path(b.user_attrs["run"])
        s = json.loads((run / "summary.json").read_text())
        per_model[name] = {"trial": b.number, "valid_score": b.value, "params": b.user_attrs.get("params"),
                           "run": str(run), "best_epoch": s.get("best_epoch"), "seconds": b.user_attrs.get("seconds"),
                           "trials": len(states), "pruned": states.count("pruned"), "failed": states.count("fail")}
        if chosen is None or b.value > chosen[1].value:
            chosen = (name, b)
    if chosen is None:
        raise ConfigError("ncf tune: no trial finished within the budget (raise --time-budget)")
    name, b = chosen
    run = Path(b.user_attrs["run"])
    refit = tuner.refit(name, b) if tuner.full is not None else None
    best_dir = out / "best"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    shutil.copytree(Path(refit["run"]) if refit else run, best_dir, ignore=shutil.ignore_patterns("state.safetensors"))
    # the choice as trained (its refit has seen the validation items)
    valid = valid_metrics(tuner, load_model(run), json.loads((run / "summary.json").read_text()))
    test = test_metrics(tuner, load_model(best_dir), tuner.full if refit else ds)  # the one read of test
    summary = {
        "dataset": ds.name, "protocol": tuner.protocol, "metric": tuner.metric,
        "select_by": f"valid {tuner.protocol} {tuner.metric}",
        "time_budget": tuner.budget, "elapsed_seconds": round(elapsed + (refit["seconds"] if refit else 0.0), 1),
        "model": name, "trial": b.number, "params": b.user_attrs.get("params"), "run": str(run),
        "best": str(best_dir), "valid": valid, "test": test, "refit": refit,
        "per_model": per_model, "n_trials": len(rows),
    }
    atomic_write_json(out / "summary.json", summary)
    console.print(f"chosen: [bold]{name}[/] trial {b.number} (valid {tuner.protocol} {tuner.metric} {b.value:.4f}); "
                  f"test {_headline(test)}{' (refitted on train + validation)' if refit else ''}; written to {out}")
    return summary


def _why_none(trials) -> str:
    """Why a model has no finished trial, from its last trial's attributes."""
    a = trials[-1].user_attrs
    if a.get("skipped"):
        return f"skipped ({a['skipped']})"
    return a.get("timeout") or a.get("error") or trials[-1].state.name.lower()


def valid_metrics(tuner, model, summary: dict | None = None) -> dict[str, Any]:
    """The chosen model's validation metrics, as trained: topk at k 10 and 20 under the topk
    protocol (those its fit scored, where it did: a given split's); else sampled and full (and
    topk where the holdouts have several rows a user)."""
    from ncf.eval.evaluator import evaluate
    from ncf.eval.topk import evaluate_topk
    from ncf.tune.search import REPORT_KS, several_a_user, topk_metrics

    ds = tuner.dataset
    scored = (summary or {}).get("valid_topk") or {}
    if tuner.protocol == "topk" and all(f"recall@{k}" in scored for k in REPORT_KS):
        return {"topk": scored}
    if tuner.protocol == "topk":
        return {"topk": dict(evaluate_topk(model, ds.valid, ds.train.matrix, tuple(REPORT_KS)))}
    out = {"sampled": evaluate(model, ds.valid, "sampled"),
           "full": evaluate(model, ds.valid, "full", seen=ds.train.matrix)}
    if several_a_user(ds):
        out["topk"] = topk_metrics(model, ds.valid, ds.train.matrix)
    return out


def test_metrics(tuner, model, data) -> dict[str, Any]:
    """DIR/best's test metrics on ``data`` (the dataset it was trained on: its test holdout and its
    seen items, validation included): the top-k metrics at k 10 and 20 (recall, ndcg, precision,
    map, coverage...) under the topk protocol; else sampled and full, plus topk where the holdouts
    have several rows a user."""
    from ncf.eval.evaluator import evaluate
    from ncf.tune.search import several_a_user, topk_metrics

    seen = data.seen(include_valid=True)
    if tuner.protocol == "topk":  # one ranking of each test user for every cut-off
        from ncf.eval.topk import evaluate_topk
        from ncf.tune.search import REPORT_KS

        return {"topk": dict(evaluate_topk(model, data.test, seen, tuple(REPORT_KS)))}
    out = {"sampled": evaluate(model, data.test, "sampled"), "full": evaluate(model, data.test, "full", seen=seen)}
    if several_a_user(tuner.dataset):
        out["topk"] = topk_metrics(model, data.test, seen)
    return out


def _headline(test: dict[str, Any]) -> str:
    if "sampled" in test:
        return (f"sampled hr@10 {test['sampled']['hr@10']:.4f} ndcg@10 {test['sampled']['ndcg@10']:.4f}, "
                f"full hr@10 {test['full']['hr@10']:.4f}")
    t = test["topk"]
    return f"recall@20 {t['recall@20']:.4f} ndcg@20 {t['ndcg@20']:.4f} recall@10 {t['recall@10']:.4f}"
