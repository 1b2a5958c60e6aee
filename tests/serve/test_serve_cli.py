"""``ncf store load`` and ``ncf serve`` from the command line (one real uvicorn process)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import redis
from serve_helpers import drop_prefix, free_port
from typer.testing import CliRunner

from ncf.cli import app
from ncf.serve.app import run_fingerprint


def test_store_load_writes_the_run(neumf_run, redis_url):
    prefix = "ncftest:cli"
    try:
        res = CliRunner().invoke(app, ["store", "load", str(neumf_run), "--redis", redis_url, "--prefix", prefix])
        assert res.exit_code == 0, res.output
        rid = run_fingerprint(neumf_run)
        assert rid in res.output and "40 users" in res.output
        client = redis.Redis.from_url(redis_url)
        assert client.hget(f"{prefix}:run:{rid}:meta", "complete") == b"1"
        assert client.hget(f"{prefix}:run:{rid}:u:101", "idx") == b"0"
        client.close()
    finally:
        drop_prefix(redis_url, prefix)


def test_store_load_errors(neumf_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["store", "load", str(neumf_run), "--redis", f"redis://127.0.0.1:{free_port()}/0"])
    assert res.exit_code == 2 and "unavailable" in res.output
    res = runner.invoke(app, ["store", "load", str(tmp_path / "none"), "--redis", "redis://127.0.0.1:1/0"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["serve", str(neumf_run), "--redis", "localhost:6379"])
    assert res.exit_code != 0 and "redis://" in str(res.exception or res.output)


def test_serve_process_end_to_end(run_copy):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ncf", "serve", str(run_copy), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "ncf serve did not come up in 60 s"
            time.sleep(0.2)
        top = httpx.get(url + "/v1/users/101/recommendations?k=1").json()["items"][0]["item"]
        assert httpx.post(url + "/v1/users/101/interactions", json={"item": top}).status_code == 201
        # the in-process store journals to DIR/interactions.jsonl by default
        assert json.loads((run_copy / "interactions.jsonl").read_text().splitlines()[0])["item"] == str(top)
        assert "ncf_http_requests_total" in httpx.get(url + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
