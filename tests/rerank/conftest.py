"""Fixtures for the re-ranking tests: a tiny trained run (GMF on a synthetic ratings file) and
its attributes CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_ratings(path: Path, n_users: int = 80, n_items: int = 60, seed: int = 0) -> Path:
    """Two user groups liking two item halves, with a popularity skew; raw ids are 101.., 5001.."""
    rng = np.random.default_rng(seed)
    rows = []
    pop = np.linspace(2.0, 0.2, n_items // 2)
    for u in range(n_users):
        half = u % 2
        pool = np.arange(n_items // 2) + half * (n_items // 2)
        chosen = rng.choice(pool, size=12, replace=False, p=pop / pop.sum())
        for t, i in enumerate(chosen):
            rows.append(f"{101 + u}\t{5001 + i}\t5\t{1000 + t}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    from ncf.config import TrainConfig
    from ncf.data.datasets import DataConfig
    from ncf.train.run import train

    d = tmp_path_factory.mktemp("rerank-run")
    src = write_ratings(d / "ratings.tsv")
    out = d / "run"
    train(DataConfig(source=str(src), sep="\t"), TrainConfig(model="gmf", factors=8, epochs=3, batch_size=256,
                                                              device="cpu", threads=1, lr=0.01), out,
          progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_attributes(tiny_run) -> Path:
    """price, margin and a category for every item but the last two (which are reported missing)."""
    from ncf.checkpoint import load_run_maps

    _, items = load_run_maps(tiny_run)
    rng = np.random.default_rng(1)
    lines = ["item,price,margin,category"]
    for j, raw in enumerate(items.raw_ids[:-2]):
        cats = ["Drama"] if j % 3 == 0 else (["Comedy", "Drama"] if j % 7 == 0 else ["Comedy"])
        lines.append(f"{raw},{rng.uniform(1, 9):.2f},{rng.uniform(0, 1):.3f},{'|'.join(cats)}")
    path = tiny_run.parent / "attributes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
