"""Approximate retrieval (issue 18): the faiss HNSW index over the dot-product rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'ncf[ann]')")

from ncf.serve.ann import AUTO_MIN_ITEMS, AnnIndex, resolve  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from ncf.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(4000, 9)) * rng.uniform(0.2, 2.0, size=(4000, 1))).astype(np.float32)


def test_hnsw_finds_the_largest_dot_products(rows):
    """As the service uses it: the exact top 10 among the index's 200 candidates (default parameters)."""
    index = AnnIndex.build(rows)
    rng = np.random.default_rng(1)
    overlaps = []
    for _ in range(50):
        q = rng.normal(size=9).astype(np.float32)
        exact = np.argsort(-(rows @ q), kind="stable")[:10]
        overlaps.append(len(np.intersect1d(index.search(q, 200), exact)) / 10)
    assert np.mean(overlaps) >= 0.95, np.mean(overlaps)


def test_search_leaves_excluded_items_out(rows):
    index = AnnIndex.build(rows, m=16)
    q = np.ones(9, np.float32)
    top = index.search(q, 10)
    exclude = np.zeros(len(rows), bool)
    exclude[top[:5]] = True
    again = index.search(q, 10, exclude)
    assert len(again) == 10 and not exclude[again].any()
    assert set(top[5:]) <= set(again)


def test_index_is_persisted_and_reloaded_only_for_the_same_rows(rows, tmp_path):
    built = AnnIndex.load_or_build(tmp_path, rows, m=16)
    assert (tmp_path / "ann.faiss").exists() and (tmp_path / "ann.json").exists()
    fp = AnnIndex.key(rows, 16)
    loaded = AnnIndex.load(tmp_path, fp)
    q = np.linspace(-1, 1, 9).astype(np.float32)
    assert loaded is not None and np.array_equal(loaded.search(q, 20), built.search(q, 20))
    assert AnnIndex.load(tmp_path, AnnIndex.key(rows[:-1], 16)) is None  # other rows: rebuild
    assert AnnIndex.load(tmp_path, AnnIndex.key(rows, 16, queries=rows[:5])) is None  # other scale: rebuild
    (tmp_path / "ann.faiss").write_bytes(b"torn")
    assert AnnIndex.load(tmp_path, fp) is None


def test_resolve_modes():
    assert resolve("auto", AUTO_MIN_ITEMS, True) and not resolve("auto", AUTO_MIN_ITEMS - 1, True)
    assert resolve("on", 10, True) and not resolve("off", 10**7, True) and not resolve("auto", 10**7, False)
    with pytest.raises(ValueError, match="dot-product"):
        resolve("on", 10, False)
    with pytest.raises(ValueError, match="auto, on or off"):
        resolve("yes", 10, True)


def test_service_with_ann_answers_like_exact_ranking(run_copy, store):
    exact = TestClient(create_app(run_copy, store, ann="off"))
    approx = TestClient(create_app(run_copy, store, ann="on"))
    assert approx.app.state.service.ann is not None and (run_copy / "ann.faiss").exists()
    for user in (101, 105, 120, 140):
        a = exact.get(f"/v1/users/{user}/recommendations?k=5").json()
        b = approx.get(f"/v1/users/{user}/recommendations?k=5").json()
        assert [x["item"] for x in a["items"]] == [x["item"] for x in b["items"]]
    # a restart loads the persisted index instead of building it
    mtime = (run_copy / "ann.faiss").stat().st_mtime_ns
    again = TestClient(create_app(run_copy, store, ann="on"))
    assert again.app.state.service.ann is not None and (run_copy / "ann.faiss").stat().st_mtime_ns == mtime
