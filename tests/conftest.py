"""Shared fixtures. Real data is read from $NCF_DATA_DIR (default: ../shared/data beside the
repository); tests that need a dataset skip, saying why, where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# before any test imports torch: OpenMP threads sleep instead of spinning while they wait
# (on shared cores spinning made training 20-60x slower; see src/ncf/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_default = ROOT.parent / "shared" / "data"
if "NCF_DATA_DIR" not in os.environ and _default.is_dir():
    os.environ["NCF_DATA_DIR"] = str(_default)

DATA_DIR = Path(os.environ["NCF_DATA_DIR"]) if "NCF_DATA_DIR" in os.environ else None


def _missing(why: str):
    """Skip a real-data test, saying why; under CI (``CI`` set) fail instead: CI has the data,
    so its absence is a broken setup, not a reason to pass with fewer tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the real-data tests must run)", pytrace=False)
    pytest.skip(f"{why}: real-data test skipped")


def _need(sub: str, probe: str) -> Path:
    if DATA_DIR is None:
        _missing("NCF_DATA_DIR is not set and ../shared/data does not exist")
    path = DATA_DIR / sub
    if not (path / probe).exists():
        _missing(f"{path / probe} is absent")
    return path


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """No test downloads: a dataset that is missing would be fetched from a loopback address nothing
    answers on (failing at once, naming it) rather than from GroupLens; the download tests point
    NCF_DOWNLOAD_URL (or ``base_url``) at their own loopback server."""
    monkeypatch.setenv("NCF_DOWNLOAD_URL", "http://127.0.0.1:9")


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    return _need("ml-100k", "u.data")


@pytest.fixture(scope="session")
def ncf_ml1m_dir() -> Path:
    return _need("ncf-ml-1m", "ml-1m.train.rating")


@pytest.fixture(scope="session")
def gowalla_dir() -> Path:
    """LightGCN's Gowalla split (train.txt / test.txt, adjacency lists)."""
    return _need("gowalla", "test.txt")


@pytest.fixture(scope="session")
def ml100k(ml100k_dir):
    from ncf.data.datasets import DataConfig, load_dataset

    return load_dataset(DataConfig(source="ml-100k"))


@pytest.fixture(scope="session")
def ncf_ml1m(ncf_ml1m_dir):
    from ncf.data.datasets import DataConfig, load_dataset

    return load_dataset(DataConfig(source="ncf-ml-1m"))


@pytest.fixture
def toy_dataset():
    """A small synthetic dataset with planted structure: two user groups that like two
    disjoint item groups; each user's held-out item is from their own group."""
    from ncf.data.interactions import Interactions
    from ncf.data.split import Dataset, HoldOut, leave_one_out, sample_candidates

    rng = np.random.default_rng(0)
    n_users = 60  # 40 items: two groups of 20
    users, items, times = [], [], []
    for u in range(n_users):
        group = u % 2
        pool = np.arange(group * 20, group * 20 + 20)
        chosen = rng.choice(pool, size=12, replace=False)
        users += [u] * len(chosen)
        items += chosen.tolist()
        times += list(range(len(chosen)))
    full = Interactions.from_raw(np.array(users), np.array(items), np.array(times))
    train, tu, ti, _ = leave_one_out(full, rng)
    train, vu, vi, _ = leave_one_out(train, rng)
    seen = full.matrix
    return Dataset(
        "toy", train,
        HoldOut(tu, ti, sample_candidates(seen, tu, ti, 10, rng)),
        HoldOut(vu, vi, sample_candidates(seen, vu, vi, 10, rng)),
        full.nnz,
    )


def _own_group_auc(scores: np.ndarray, ds, users) -> float:
    """For ``toy_dataset``: the share of (own-group item, other-group item) pairs a user's
    scores order correctly, averaged over ``users`` (rows of ``scores``)."""
    group_of_item = np.array(ds.train.item_map.raw_ids) // 20
    aucs = []
    for row, u in zip(scores, users, strict=True):
        g = int(ds.train.user_map.raw(u)) % 2
        own, other = row[group_of_item == g], row[group_of_item != g]
        aucs.append((own[:, None] > other[None, :]).mean())
    return float(np.mean(aucs))


@pytest.fixture
def own_group_auc():
    """The planted-structure check of ``toy_dataset`` as a function (see ``_own_group_auc``)."""
    return _own_group_auc
