"""Helpers for the serving tests (imported by conftest.py and the tests): run directories
with synthetic data, a redis-server process of a test's own, key clean-up."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ncf.checkpoint import save_model, save_run_data
from ncf.data.interactions import Interactions
from ncf.models import NeuMF

N_USERS, N_ITEMS = 40, 30

def spread(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw every weight with a wide spread so that scores are far from ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model.eval()


def make_interactions(seed: int = 0, str_ids: bool = False) -> Interactions:
    """Users 101..140 and items 1001..1030 (raw ids unlike their indexes), 6-12 items each;
    ``str_ids``: users "user-101".. and items "m1001".. instead."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(N_USERS):
        chosen = rng.choice(N_ITEMS, size=rng.integers(6, 13), replace=False)
        users += [f"user-{101 + u}" if str_ids else 101 + u] * len(chosen)
        items += [f"m{1001 + c}" if str_ids else 1001 + c for c in chosen]
    return Interactions.from_raw(np.array(users), np.array(items))


def write_run(directory: Path, model_cls=NeuMF, seed: int = 0, str_ids: bool = False, **params) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    inter = make_interactions(seed, str_ids)
    model = spread(model_cls.from_params(inter.n_users, inter.n_items, **params), seed)
    info = {"titles": [f"Movie {r}" for r in inter.item_map.raw_ids]}
    save_run_data(directory, inter.user_map, inter.item_map, inter.matrix, info)
    save_model(directory, model, {"data": {"source": "synthetic"}})
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A redis-server of the test's own, on a free port, data in ``directory`` (AOF on)."""

    def __init__(self, directory: Path, appendonly: bool = True):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            why = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("CI"):  # .ci/run installs it: its absence is a broken setup
                pytest.fail(f"{why} (CI is set: the Redis tests must run)", pytrace=False)
            pytest.skip(f"{why}: Redis test skipped")
        self.directory, self.appendonly = Path(directory), appendonly
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes its append-only file and exits
            self.proc.wait(timeout=10)
        self.proc = None


def redis_store(url: str, prefix: str):
    from ncf.serve.store import RedisStore

    return RedisStore(url, prefix=prefix, timeout=2.0)


def drop_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
