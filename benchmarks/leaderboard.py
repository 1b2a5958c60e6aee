"""ncf's rows of the Gowalla table (LightGCN's split, full ranking), each one command, with its wall
time and peak memory on this machine, written into ``docs/benchmarks.md``.

    python benchmarks/leaderboard.py                          # every row, printed
    python benchmarks/leaderboard.py --rows gfcf,bspm         # some rows
    python benchmarks/leaderboard.py --write docs/benchmarks.md   # and replace the page's table

Every row is run as a user would run it: ``ncf train --train ... --test ... --out DIR`` (then
``ncf evaluate DIR --protocol topk -k 20``, timed apart) or ``ncf tune ... --protocol topk``, each
in a process of its own under ``/usr/bin/time`` (wall seconds and peak resident memory of the
command, children included). Rows at a model's published settings train on the whole training
file (``--no-valid``): nothing is chosen, so nothing needs validation. Tuned rows choose on the
validation carved from the training file and read the test file once, at the end.

The page keeps the rows of earlier runs that this run did not redo (their own date and commit
stay on them); a row run again replaces its old line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_shared = ROOT.parent / "shared" / "data"  # as tests/conftest.py: ../shared/data


@dataclass
class Row:
    key: str
    label: str
    args: list[str]  # after `ncf`, with {train} {test} {out} filled in
    tune: bool = False


def _train(model: str, *extra: str) -> list[str]:
    return ["train", "--train", "{train}", "--test", "{test}", "--layout", "adjacency", "--model", model,
            "--out", "{out}", "--quiet", *extra]


def _tune(budget: int, *extra: str) -> list[str]:
    return ["tune", "--train", "{train}", "--test", "{test}", "--layout", "adjacency", "--protocol", "topk",
            "--time-budget", str(budget), "--out", "{out}", "--quiet", *extra]


ROWS = [
    Row("pop", "most popular", _train("pop", "--no-valid")),
    Row("ials", "iALS, ncf's defaults", _train("ials", "--no-valid")),
    Row("itemknn", "item-KNN, ncf's defaults", _train("itemknn", "--no-valid")),
    Row("gfcf", "GF-CF, published settings", _train("gfcf", "--no-valid")),
    Row("bspm", "BSPM, published settings", _train("bspm", "--no-valid")),
    Row("tune300", "`ncf tune`, 300 s", _tune(300), tune=True),
    Row("tune1800", "`ncf tune`, 1800 s", _tune(1800), tune=True),
]

BEGIN, END = "<!-- leaderboard:begin -->", "<!-- leaderboard:end -->"


def timed(argv: list[str], log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in MiB, exit code) of ``argv`` run under /usr/bin/time."""
    stats = log.with_suffix(".time")
    with open(log, "w") as out:
        rc = subprocess.call(["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *argv], stdout=out,
                             stderr=subprocess.STDOUT)
    wall, kib = stats.read_text().strip().splitlines()[-1].split()
    return float(wall), int(kib) // 1024, rc


def run_row(row: Row, train: Path, test: Path, work: Path) -> dict:
    out = work / row.key
    argv = [sys.executable, "-m", "ncf", *[a.format(train=train, test=test, out=out) for a in row.args]]
    wall, peak, rc = timed(argv, work / f"{row.key}.log")
    if rc:
        raise SystemExit(f"{row.key}: `{' '.join(argv)}` failed (exit {rc}); see {work / row.key}.log")
    res = {"key": row.key, "label": row.label, "fit_s": wall, "peak_mib": peak,
           "command": "ncf " + " ".join(a.format(train="gowalla/train.txt", test="gowalla/test.txt",
                                                 out=f"runs/{row.key}") for a in row.args)}
    if row.tune:
        summary = json.loads((out / "summary.json").read_text())
        test = summary["test"]["topk"]
        res.update(recall=test["recall@20"], ndcg=test["ndcg@20"], chosen=summary.get("best", {}).get("model"))
        return res
    ev = [sys.executable, "-m", "ncf", "evaluate", str(out), "--protocol", "topk", "-k", "20", "--json"]
    wall, peak, rc = timed(ev, work / f"{row.key}.eval.json")
    if rc:
        raise SystemExit(f"{row.key}: evaluation failed; see {work / row.key}.eval.json")
    text = (work / f"{row.key}.eval.json").read_text()
    got = json.loads(text[text.index("{"):])
    res.update(recall=got["recall@20"], ndcg=got["ndcg@20"], eval_s=wall, peak_mib=max(res["peak_mib"], peak))
    return res


def table_line(r: dict, stamp: str) -> str:
    what = r["label"] + (f" (chose {r['chosen']})" if r.get("chosen") else "")
    ev = f" + {r['eval_s']:.0f}" if "eval_s" in r else ""
    return (f"| {what} | {r['recall']:.4f} | {r['ndcg']:.4f} | {r['fit_s']:.0f}{ev} | {r['peak_mib'] / 1024:.1f} | "
            f"{stamp} | `{r['command']}` |")


def write_page(page: Path, lines: dict[str, str]) -> None:
    """Replace the rows of ``lines`` (by key, kept in ROWS' order) between the page's markers."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page}: no {BEGIN} ... {END} block to write the table into")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    old = {m.group(1): m.group(0) for m in re.finditer(r"^<!-- row:(\w+) -->.*$", body, re.M)}
    old.update({k: f"<!-- row:{k} -->{v}" for k, v in lines.items()})
    header = ("\n| ncf | Recall@20 | NDCG@20 | wall s (fit + evaluation) | peak GiB | measured | command |\n"
              "| --- | --- | --- | --- | --- | --- | --- |\n")
    known = [r.key for r in ROWS]
    rows = "\n".join([old[k] for k in known if k in old] + [v for k, v in old.items() if k not in known])
    page.write_text(f"{head}{BEGIN}{header}{rows}\n{END}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("NCF_DATA_DIR", str(_shared)))
    p.add_argument("--rows", default="all", help=f"comma-separated, of: {', '.join(r.key for r in ROWS)}")
    p.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--write", default=None, help="the page whose table to replace (docs/benchmarks.md)")
    a = p.parse_args()
    gow = Path(a.data_dir) / "gowalla"
    train, test = gow / "train.txt", gow / "test.txt"
    if not (train.exists() and test.exists()):
        raise SystemExit(f"{gow}: no train.txt / test.txt (LightGCN's Gowalla split; see ../shared/data/README.md)")
    keys = [r.key for r in ROWS] if a.rows == "all" else a.rows.split(",")
    unknown = sorted(set(keys) - {r.key for r in ROWS})
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)} (known: {', '.join(r.key for r in ROWS)})")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="ncf-leaderboard-"))
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = {}
    for row in (r for r in ROWS if r.key in keys):
        load = os.getloadavg()[0]
        res = run_row(row, train, test, work)
        stamp = f"{time.strftime('%Y-%m-%d')}, `{commit}`, load {load:.1f}"
        lines[row.key] = table_line(res, stamp)
        print(lines[row.key], flush=True)
    if a.write:
        write_page(Path(a.write), lines)
        print(f"wrote {len(lines)} row(s) into {a.write}")


if __name__ == "__main__":
    main()
