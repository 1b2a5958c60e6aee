"""Trade-off curves of business-constrained re-ranking: HR@k / NDCG@k (full ranking, against
each user's test item) as a revenue or coverage constraint tightens.

    nice python benchmarks/rerank_tradeoff.py RUN_DIR --attributes ATTRS.csv --out OUT_DIR

Targets run from the unconstrained value towards the most any slates can reach:
``base + f * (max - base)`` for each fraction f. Writes OUT_DIR/rerank_tradeoff.json, a PNG
plot and prints a markdown table (the one in docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ncf.rerank.constraints import parse_constraint
from ncf.rerank.offline import RunReranker

console = Console(stderr=True)


def fractions(text: str) -> list[float]:
    out = [float(x) for x in text.split(",") if x.strip()]
    if not out or any(not 0 < f < 1 for f in out):
        raise SystemExit(f"fractions must lie in (0, 1), got {text!r}")
    return out


def row(kind: str, frac: float | None, expr: str | None, rep: dict, seconds: float, k: int) -> dict:
    cons = rep.get("constraints") or [{}]
    return {
        "curve": kind, "fraction": frac, "constraint": expr,
        "achieved": cons[0].get("achieved"), "satisfied": all(c["satisfied"] for c in rep.get("constraints", [])),
        "multiplier": next(iter(rep.get("multipliers", {}).values()), None),
        "revenue": rep["revenue"], "coverage": rep["coverage"], "mean_relevance": rep["mean_relevance"],
        f"hr@{k}": rep.get(f"hr@{k}"), f"ndcg@{k}": rep.get(f"ndcg@{k}"),
        "evaluations": rep.get("solver", {}).get("evaluations"),
        "repaired_users": rep.get("solver", {}).get("repaired_users"), "seconds": seconds,
    }


def plot(rows: list[dict], base: dict, k: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (kind, xkey, xlabel) in zip(axes, [("revenue", "revenue", "mean expected revenue per slate"),
                                               ("coverage", "coverage", "distinct items recommended")],
                                        strict=True):
        pts = [base] + [r for r in rows if r["curve"] == kind]
        x = [p[xkey] for p in pts]
        for metric, style in ((f"hr@{k}", "o-"), (f"ndcg@{k}", "s--")):
            ax.plot(x, [p[metric] for p in pts], style, label=metric.upper())
        ax.plot([x[0]], [base[f"hr@{k}"]], "k*", markersize=12, label="unconstrained")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy of the re-ranked slates (full ranking)")
        ax.set_title(f"tightening {kind}>=target")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], base: dict, k: int) -> str:
    head = f"| constraint | achieved | revenue | coverage | mean p | HR@{k} | NDCG@{k} | multiplier | seconds |"
    lines = [head, "|" + "---|" * 9]
    lines.append(f"| none | - | {base['revenue']:.2f} | {base['coverage']} | {base['mean_relevance']:.4f} | "
                 f"{base[f'hr@{k}']:.4f} | {base[f'ndcg@{k}']:.4f} | - | - |")
    for r in rows:
        lines.append(
            f"| `{r['constraint']}` | {r['achieved']:.4g}{'' if r['satisfied'] else ' (unmet)'} | "
            f"{r['revenue']:.2f} | {r['coverage']} | {r['mean_relevance']:.4f} | {r[f'hr@{k}']:.4f} | "
            f"{r[f'ndcg@{k}']:.4f} | {r['multiplier']:.4g} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--attributes", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--revenue", default="0.1,0.25,0.5,0.75,0.9", help="fractions of the way to the max revenue")
    ap.add_argument("--coverage", default="0.1,0.25,0.5,0.75,0.9", help="fractions of the way to max coverage")
    ap.add_argument("--extra", action="append", default=[],
                    help="an extra constraint set to report, e.g. 'revenue>=30;category:Drama<=0.3;coverage>=2000'")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    k = args.k

    t0 = time.perf_counter()
    with console.status("loading the run, scoring every user") as st:
        rr = RunReranker(args.run, args.attributes, k=k, progress=lambda m: st.update(f"loading: {m}"))
        base = rr.baseline()
        pr = rr.problem([parse_constraint("revenue>=0")])
        rev_max = pr.extreme(0)
        cov_max = rr.problem([parse_constraint("coverage>=0")]).max_coverage()
    console.print(f"loaded in {time.perf_counter() - t0:.0f}s; unconstrained revenue {base['revenue']:.3f} "
                  f"(max reachable {rev_max:.3f}), coverage {base['coverage']} (at most {cov_max})")

    plan = [("revenue", f, f"revenue>={base['revenue'] + f * (rev_max - base['revenue']):.3f}")
            for f in fractions(args.revenue)]
    plan += [("coverage", f, f"coverage>={int(round(base['coverage'] + f * (cov_max - base['coverage'])))}")
             for f in fractions(args.coverage)]
    plan += [("extra", None, e) for e in args.extra]
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as prog:
        task = prog.add_task("constraints", total=len(plan))
        for kind, frac, expr in plan:
            def say(msg: str, expr=expr) -> None:
                prog.update(task, description=f"{expr}: {msg}"[:90])

            rr.progress = say
            t = time.perf_counter()
            rep, _ = rr.run(expr.split(";"))
            rows.append(row(kind, frac, expr, rep, time.perf_counter() - t, k))
            prog.advance(task)

    result = {"run": str(args.run), "attributes": str(args.attributes), "k": k, "unconstrained": base,
              "revenue_max": rev_max, "coverage_max": cov_max, "rows": rows,
              "total_seconds": time.perf_counter() - t0}
    (args.out / "rerank_tradeoff.json").write_text(json.dumps(result, indent=2) + "\n")
    title = f"{json.loads((args.run / 'config.json').read_text())['model']} on {rr.cfg['data']['source']}: " \
            f"re-ranked top-{k} slates"
    plot(rows, base, k, args.out / "rerank_tradeoff.png", title)
    print(markdown(rows, base, k))
    console.print(f"wrote {args.out / 'rerank_tradeoff.json'} and {args.out / 'rerank_tradeoff.png'} "
                  f"({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
