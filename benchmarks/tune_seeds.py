"""Seed spread of the model ``ncf tune`` chose (issue 17): retrain the chosen configuration with
other seeds (the training seed and the data seed, which draws the validation negatives) and
report test metrics, mean and spread over the tune's own run and these. Where the tune refitted
its choice on train + validation (``--refit``), each seed's is refitted so too.

For an ``ensemble`` the members are retrained with their own configurations and the blend's
weights chosen again on validation (as ``ncf tune`` did); nothing looks at test for a choice.

    python benchmarks/tune_seeds.py --tune /tmp/tune-1m-1800 --seeds 1,2 --out /tmp/tune-1m-seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.train.run import train
from ncf.tune.search import refit_run

KEYS = (("test", "hr@10"), ("test", "ndcg@10"), ("test_full", "hr@10"), ("test_full", "ndcg@10"))


def retrain(run: Path, seed: int, out: Path, dataset) -> Path:
    """Train ``run``'s configuration again with ``seed`` into ``out``; an SGD run for as many
    epochs as ``run`` ran (a tune trial may have been stopped by the budget), early stopping on."""
    cfg = json.loads((run / "config.json").read_text())
    ran = json.loads((run / "summary.json").read_text()).get("epochs_run") or cfg["train"]["epochs"]
    tc = TrainConfig.from_dict({**cfg["train"], "seed": seed, "epochs": max(1, int(ran))})
    train(DataConfig(**{**cfg["data"], "seed": seed}), tc, out, dataset=dataset, progress=False)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tune", type=Path, required=True, help="an ncf tune output directory")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    summary = json.loads((a.tune / "summary.json").read_text())
    chosen = Path(summary["run"])  # as trained, before any refit
    cfg = json.loads((chosen / "config.json").read_text())

    def flat(test: dict) -> dict:
        return {f"{k}/{m}": test["sampled" if k == "test" else "full"][m] for k, m in KEYS}

    rows = [{"seed": 0, "valid": summary["valid"]["sampled"]["ndcg@10"], **flat(summary["test"])}]
    if summary.get("refit"):
        if summary["refit"].get("test_as_trained"):  # tunes before test was read once, for DIR/best alone
            rows[0]["as_trained"] = flat(summary["refit"]["test_as_trained"])
    for seed in [int(s) for s in a.seeds.split(",") if s.strip()]:
        t0 = time.time()
        data_cfg = DataConfig(**{**cfg["data"], "seed": seed})
        dataset = load_dataset(data_cfg)
        out = a.out / f"seed{seed}"
        if cfg["model"] == "ensemble":
            mp = cfg["model_params"]
            members = [str(retrain(Path(m["source"]), seed, out / f"m{k}-{m['model']}", dataset))
                       for k, m in enumerate(mp["members"])]
            tc = TrainConfig.from_dict({**cfg["train"], "seed": seed, "params": {
                "members": members, "select": mp["select"], "metric": mp["metric"], "step": mp["step"]}})
            run = out / "ensemble"
            train(data_cfg, tc, run, dataset=dataset, progress=False)
        else:
            run = retrain(chosen, seed, out / cfg["model"], dataset)
        s = json.loads((run / "summary.json").read_text())
        row = {"seed": seed, "valid": s["valid"]["ndcg@10"]}
        if summary.get("refit"):  # as the tune did: the choice trained again on train + validation
            row["as_trained"] = {f"{k}/{m}": s[k][m] for k, m in KEYS}
            full_cfg = dataclasses.replace(data_cfg, valid=False)
            again = refit_run(run, out / "refit", full_cfg, load_dataset(full_cfg), with_test=True)
            s = json.loads((again / "summary.json").read_text())
        rows.append({**row, **{f"{k}/{m}": s[k][m] for k, m in KEYS}, "seconds": round(time.time() - t0, 1)})
        Console(stderr=True).print(rows[-1])
    cols = ["valid"] + [f"{k}/{m}" for k, m in KEYS]
    stats = {c: {"mean": statistics.mean(r[c] for r in rows), "stdev": statistics.stdev(r[c] for r in rows)
                 if len(rows) > 1 else 0.0} for c in cols}
    result = {"tune": str(a.tune), "model": cfg["model"], "rows": rows, "stats": stats}
    t = Table(title=f"{cfg['model']} chosen by {a.tune}: seeds")
    for c in ["seed"] + cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["seed"]), *(f"{r[c]:.4f}" for c in cols))
    t.add_row("mean ± sd", *(f"{stats[c]['mean']:.4f} ± {stats[c]['stdev']:.4f}" for c in cols))
    if all("as_trained" in r for r in rows):  # the same seeds before the refit: a paired comparison
        before = {c: statistics.mean(r["as_trained"][c] for r in rows) for c in cols[1:]}
        result["as_trained_mean"] = before
        t.add_row("as trained, mean", "", *(f"{before[c]:.4f}" for c in cols[1:]))
    Console().print(t)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
