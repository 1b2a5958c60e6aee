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
    """Choose the best trial on validation, copy it to DIR/best, write every report file."""
    from ncf.eval.evaluator import evaluate

    out, ds = tuner.out, tuner.dataset
    rows = trial_rows(tuner)
    write_trials_csv(rows, out / "trials.csv")
    plot_trials(rows, out / "tune.png", f"ncf tune on {ds.name}",
                f"validation {tuner.protocol} {tuner.metric}")
    per_model, chosen = {}, None
    for name in tuner.studies:
        b = tuner.best(name)
        states = [t.state.name.lower() for t in tuner.studies[name].get_trials(deepcopy=False)]
        if b is None:
            continue
        run = Path(b.user_attrs["run"])
        s = json.loads((run / "summary.json").read_text())
        per_model[name] = {"trial": b.number, "valid_score": b.value, "params": b.user_attrs.get("params"),
                           "run": str(run), "best_epoch": s.get("best_epoch"), "seconds": b.user_attrs.get("seconds"),
                           "trials": len(states), "pruned": states.count("pruned"), "failed": states.count("fail"),
                           # reported beside the choice, never used for it
                           "test": _test_of(s)}
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
    model = load_model(run)  # validation: the choice as trained (its refit has seen the validation items)
    s = json.loads((best_dir / "summary.json").read_text())
    valid = {"sampled": evaluate(model, ds.valid, "sampled"),
             "full": evaluate(model, ds.valid, "full", seen=ds.train.matrix)}
    test = _test_of(s)
    if "test_topk" in s:  # several held-out items a user (--split other than loo)
        from ncf.eval.topk import evaluate_topk

        valid["topk"] = evaluate_topk(model, ds.valid, ds.train.matrix, 10)
    if refit:
        refit = {**refit, "test_as_trained": _test_of(json.loads((run / "summary.json").read_text()))}
    summary = {
        "dataset": ds.name, "protocol": tuner.protocol, "select_by": f"valid {tuner.protocol} {tuner.metric}",
        "time_budget": tuner.budget, "elapsed_seconds": round(elapsed + (refit["seconds"] if refit else 0.0), 1),
        "model": name, "trial": b.number, "params": b.user_attrs.get("params"), "run": str(run),
        "best": str(best_dir), "valid": valid, "test": test, "refit": refit,
        "per_model": per_model, "n_trials": len(rows),
    }
    atomic_write_json(out / "summary.json", summary)
    console.print(f"chosen: [bold]{name}[/] trial {b.number} (valid {tuner.protocol} {tuner.metric} {b.value:.4f}); "
                  f"test sampled hr@10 {s['test']['hr@10']:.4f} ndcg@10 {s['test']['ndcg@10']:.4f}, "
                  f"full hr@10 {s['test_full']['hr@10']:.4f}{' (refitted on train + validation)' if refit else ''}; "
                  f"written to {out}")
    return summary


def _test_of(s: dict[str, Any]) -> dict[str, Any]:
    """A run summary's test metrics as summary.json reports them."""
    return {"sampled": s["test"], "full": s["test_full"], **({"topk": s["test_topk"]} if "test_topk" in s else {})}
