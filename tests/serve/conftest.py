"""Fixtures for the serving tests: a small run directory, Redis servers, and the ``store``
fixture that runs every store-facing test against both the in-process store and Redis.

Redis: ``$NCF_TEST_REDIS_URL`` where set (CI starts a shared server), else a redis-server
started here on a free port; tests that stop and restart Redis always start their own
(``RedisProcess``). Without a redis-server binary the Redis cases skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import torch

# the tests import their helpers as a plain module (pytest runs with --import-mode=importlib,
# which puts no test folder on sys.path)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_helpers import RedisProcess, drop_prefix, redis_store, write_run  # noqa: E402

from ncf.models import GMF, MLP, NeuMF  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Serving work is small; on a shared machine one torch thread is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def neumf_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("neumf-run"), NeuMF, factors=4, layers=(8, 6, 4))


@pytest.fixture
def run_copy(neumf_run, tmp_path) -> Path:
    """A private copy of the run (tests that write beside it: journals, rerank.json)."""
    dst = tmp_path / "run"
    shutil.copytree(neumf_run, dst)
    return dst


@pytest.fixture(scope="session")
def model_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "gmf": write_run(root / "gmf", GMF, factors=5),
        "mlp": write_run(root / "mlp", MLP, layers=(8, 6, 4)),
        "mlp-linear": write_run(root / "mlp-linear", MLP, layers=(8,)),
        "neumf": write_run(root / "neumf", NeuMF, factors=4, layers=(8, 6, 4)),
    }


# --- Redis ---------------------------------------------------------------------------------

@pytest.fixture
def redis_proc(tmp_path):
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("NCF_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis-shared"), appendonly=False).start()
    yield server.url
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def store_factory(request, tmp_path):
    """A function returning a fresh handle on the same store each call (as a restarted service
    would open it): the in-process store reopens its journal, Redis the same URL and prefix."""
    if request.param == "memory":
        from ncf.serve.store import InMemoryStore

        journal = tmp_path / "interactions.jsonl"
        yield lambda: InMemoryStore(journal)
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"ncftest:{uuid.uuid4().hex[:8]}"
    yield lambda: redis_store(url, prefix)
    drop_prefix(url, prefix)


@pytest.fixture
def store(store_factory):
    s = store_factory()
    yield s
    s.close()
