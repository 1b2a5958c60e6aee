"""``ncf similar``, ``ncf plot items`` and ``ncf train --init-items`` through the CLI entry point."""

import json

import numpy as np
import pytest

pytest.importorskip("gensim")
pytest.importorskip("sklearn")

from ncf.cli import main  # noqa: E402
from ncf.config import TrainConfig  # noqa: E402
from ncf.data.datasets import DataConfig  # noqa: E402
from ncf.train.run import train  # noqa: E402

GENRES = ["Drama", "Comedy"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:  # main() returns on success and exits with status 2 on errors a user can cause
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def toy_runs(toy_dataset, tmp_path):
    """An item2vec run (with titles and genres; the 2 rarest items below min_count) and a GMF run."""
    raw = toy_dataset.train.item_map.raw_ids
    toy_dataset.item_info = {"titles": [f"movie {r}" for r in raw],
                             "genres": [[GENRES[int(r) // 20]] for r in raw]}
    counts = np.bincount(toy_dataset.train.matrix.indices, minlength=toy_dataset.n_items)
    min_count = int(np.sort(counts)[1]) + 1
    params = {"vector_size": 8, "epochs": 30, "window": 0, "sample": 0.0, "min_count": min_count}
    dcfg = DataConfig(source="toy")
    train(dcfg, TrainConfig(model="item2vec", params=params), tmp_path / "i2v", dataset=toy_dataset, progress=False)
    train(dcfg, TrainConfig(model="gmf", factors=8, epochs=3, patience=0, device="cpu"), tmp_path / "gmf",
          dataset=toy_dataset, progress=False)
    below = [raw[i] for i in np.flatnonzero(counts < min_count)]
    return tmp_path / "i2v", tmp_path / "gmf", below


def test_similar_json_lists_nearest_items_with_titles(toy_runs, capsys):
    i2v, _, below = toy_runs
    query = next(r for r in range(20) if r not in below)  # a group-0 item with a vector
    rc, out, _ = run_cli(capsys, "similar", i2v, "--item", query, "-k", 5, "--json")
    assert rc == 0
    items = json.loads(out)
    assert len(items) == 5 and all(set(it) == {"item", "score", "title"} for it in items)
    assert query not in [it["item"] for it in items]
    assert not set(below) & {it["item"] for it in items}  # items without a vector are never listed
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.0001 for s in scores)
    assert all(it["title"] == f"movie {it['item']}" for it in items)
    assert sum(it["item"] // 20 == 0 for it in items) >= 4  # neighbours come from the query's group


def test_similar_table_and_gmf_runs(toy_runs, capsys):
    i2v, gmf, below = toy_runs
    query = next(r for r in range(20, 40) if r not in below)
    rc, out, _ = run_cli(capsys, "similar", i2v, "--item", query, "-k", 3)
    assert rc == 0 and f"movie {query}" in out and "cosine" in out
    rc, out, _ = run_cli(capsys, "similar", gmf, "--item", query, "-k", 3, "--json")
    assert rc == 0 and len(json.loads(out)) == 3


def test_similar_unknown_and_below_min_count_items_get_clear_errors(toy_runs, capsys, tmp_path):
    i2v, _, below = toy_runs
    rc, _, err = run_cli(capsys, "similar", i2v, "--item", "no-such-item")
    assert rc == 2 and "unknown item 'no-such-item'" in err
    rc, _, err = run_cli(capsys, "similar", i2v, "--item", below[0])
    assert rc == 2 and "has no vector" in err and "min_count" in err
    rc, _, err = run_cli(capsys, "similar", i2v, "--item", 1, "-k", 0)
    assert rc == 2 and "-k" in err
    rc, _, err = run_cli(capsys, "similar", tmp_path / "nowhere", "--item", 1)
    assert rc == 2 and "no such run directory" in err


def test_plot_items_writes_a_png(toy_runs, capsys, tmp_path):
    i2v, _, below = toy_runs
    png = tmp_path / "map.png"
    rc, out, _ = run_cli(capsys, "plot", "items", i2v, "--out", png, "--json")
    assert rc == 0
    res = json.loads(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["items"] == 40 - len(below) and res["skipped"] == len(below)
    assert set(res["genres"]) == set(GENRES)
    rc, out, _ = run_cli(capsys, "plot", "items", i2v, "--max-items", 10)
    assert rc == 0 and (i2v / "items.png").exists() and "10 items drawn" in out
    png.write_bytes(b"someone else's picture")  # an existing file: only with --overwrite
    rc, _, err = run_cli(capsys, "plot", "items", i2v, "--out", png)
    assert rc == 2 and "--overwrite" in err and png.read_bytes() == b"someone else's picture"
    rc, _, err = run_cli(capsys, "plot", "items", i2v, "--out", i2v / "idmap.json", "--overwrite")
    assert rc == 2 and "run directory" in err


def test_train_init_items_cli(toy_runs, capsys, tmp_path, monkeypatch):
    i2v, _, below = toy_runs
    import ncf.train.run as run

    seen = {}
    real = run.train

    def spy(dcfg, cfg, out, **kw):  # the toy dataset is not a registered source: inject it
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(run, "train", spy)
    with pytest.raises(RuntimeError, match="stop here"):
        main(["train", "--dataset", "toy", "--model", "gmf", "--out", str(tmp_path / "w"), "--init-items", str(i2v)])
    assert seen["init_items"] == i2v
    monkeypatch.setattr(run, "train", real)
    rc, _, err = run_cli(capsys, "train", "--resume", tmp_path / "w", "--init-items", i2v)
    assert rc == 2 and "--init-items applies to a new run" in err
