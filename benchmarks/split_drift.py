"""How alike a dataset's validation and test items are (issue 17): what ``ncf tune`` chooses on
(validation) against what it is judged on (test), next to the training interactions.

Per set of held-out items (and, for reference, all training interactions): the share of items
released in the catalogue's last two years (the year in a MovieLens title), their mean release
year, and the mean log of their training popularity. On ``ncf-ml-1m`` the training file has no
timestamps, so the validation item is a random history item while the test item is each user's
latest; on a timestamped source (``ml-100k``) validation is the second-latest item, like test.

    NCF_DATA_DIR=../shared/data python benchmarks/split_drift.py --dataset ncf-ml-1m
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
from rich.console import Console
from rich.table import Table

from ncf.data.datasets import DataConfig, load_dataset

YEAR = re.compile(r"\((\d{4})\)\s*$")


def release_years(titles: list[str | None]) -> np.ndarray:
    """Release year by item index from MovieLens titles ("Toy Story (1995)"); NaN where none."""
    out = np.full(len(titles), np.nan)
    for k, t in enumerate(titles):
        m = YEAR.search(t or "")
        if m:
            out[k] = float(m.group(1))
    return out


def describe(items: np.ndarray, years: np.ndarray, log_pop: np.ndarray, recent: float) -> dict[str, float]:
    y = years[items]
    known = ~np.isnan(y)
    return {"rows": int(len(items)), "recent_share": float((y[known] >= recent).mean()),
            "mean_year": float(y[known].mean()), "mean_log_popularity": float(log_pop[items].mean())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ncf-ml-1m")
    p.add_argument("--seed", type=int, default=0, help="the data seed (draws ncf-ml-1m's validation items)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    ds = load_dataset(DataConfig(source=a.dataset, seed=a.seed))
    if not ds.item_info:
        raise SystemExit(f"{a.dataset}: no item titles to read release years from")
    years = release_years(ds.item_info["titles"])
    recent = float(np.nanmax(years)) - 1
    m = ds.train.matrix.tocsr()
    pop = np.asarray((m > 0).sum(0)).ravel()
    log_pop = np.log(np.maximum(pop, 1))
    rows = {"training": describe(m.indices, years, log_pop, recent),
            "valid items": describe(np.asarray(ds.valid.items), years, log_pop, recent),
            "test items": describe(np.asarray(ds.test.items), years, log_pop, recent)}
    out = {"dataset": a.dataset, "seed": a.seed, "timestamps": ds.report.get("timestamps"),
           "recent_from": recent, "sets": rows}
    if a.json:
        print(json.dumps(out, indent=2))
        return out
    t = Table(title=f"{a.dataset}: held-out items against training (timestamps in training: "
                    f"{ds.report.get('timestamps')})")
    for c in ("set", "rows", f"share >= {recent:.0f}", "mean year", "mean log pop"):
        t.add_column(c, justify="left" if c == "set" else "right")
    for name, r in rows.items():
        t.add_row(name, str(r["rows"]), f"{r['recent_share']:.3f}", f"{r['mean_year']:.2f}",
                  f"{r['mean_log_popularity']:.3f}")
    Console().print(t)
    return out


if __name__ == "__main__":
    main()
