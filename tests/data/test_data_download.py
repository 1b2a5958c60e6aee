"""Download against a loopback HTTP server serving a zip made at test time from
../shared/data/ml-100k: verified, atomic, and refusing corrupted or truncated archives."""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ncf.cli import main
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.download import KNOWN_MD5, DownloadError, download
from ncf.data.readers import DataError


@pytest.fixture(scope="module")
def ml100k_zip(ml100k_dir) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in sorted(ml100k_dir.iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
    return buf.getvalue()


class Server:
    """Serves ``files`` (path -> bytes); ``truncate`` (path -> n) sends a full Content-Length
    but only n bytes, then drops the connection. Counts requests by path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = outer.truncate.get(self.path, len(body))
                self.wfile.write(body[:n])
                if n < len(body):
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def publish(self, name: str, data: bytes, md5: str | None = None):
        self.files[f"/{name}.zip"] = data
        if md5 is not False:
            digest = md5 or hashlib.md5(data).hexdigest()
            self.files[f"/{name}.zip.md5"] = f"MD5 ({name}.zip) = {digest}\n".encode()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _assert_empty(root):
    assert sorted(p.name for p in root.iterdir()) == [], "something was left behind"


def test_download_verifies_and_unpacks(server, ml100k_zip, ml100k_dir, tmp_path):
    server.publish("ml-100k", ml100k_zip)
    root = tmp_path / "data"
    folder = download("ml-100k", root, server.url, progress=False)
    assert folder == root / "ml-100k" and sorted(p.name for p in root.iterdir()) == ["ml-100k"]
    assert (folder / "u.data").read_bytes() == (ml100k_dir / "u.data").read_bytes()
    assert download("ml-100k", root, server.url, progress=False) == folder  # present: no second fetch
    assert server.hits["/ml-100k.zip"] == 1
    (folder / "marker").write_text("old")
    download("ml-100k", root, server.url, progress=False, force=True)
    assert server.hits["/ml-100k.zip"] == 2 and not (folder / "marker").exists()
    assert sorted(p.name for p in root.iterdir()) == ["ml-100k"]


def test_corrupted_download_is_refused(server, ml100k_zip, tmp_path):
    bad = bytearray(ml100k_zip)
    bad[len(bad) // 2] ^= 0xFF
    server.publish("ml-100k", bytes(bad), md5=hashlib.md5(ml100k_zip).hexdigest())
    with pytest.raises(DownloadError, match=r"ml-100k\.zip: MD5 [0-9a-f]{32} does not match the published"):
        download("ml-100k", tmp_path, server.url, progress=False)
    _assert_empty(tmp_path)


def test_truncated_download_is_refused(server, ml100k_zip, tmp_path):
    server.publish("ml-100k", ml100k_zip)
    server.truncate["/ml-100k.zip"] = len(ml100k_zip) // 3
    with pytest.raises(DownloadError, match=r"ml-100k\.zip: download truncated"):
        download("ml-100k", tmp_path, server.url, progress=False)
    _assert_empty(tmp_path)


def test_existing_dataset_survives_a_failed_forced_download(server, ml100k_zip, tmp_path):
    server.publish("ml-100k", ml100k_zip)
    folder = download("ml-100k", tmp_path, server.url, progress=False)
    server.truncate["/ml-100k.zip"] = 1000
    with pytest.raises(DownloadError):
        download("ml-100k", tmp_path, server.url, progress=False, force=True)
    assert (folder / "u.data").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["ml-100k"]


def test_server_down(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"http://127.0.0.1:{port}/ml-100k.zip.md5: cannot connect .*refused"):
        download("ml-100k", tmp_path, f"http://127.0.0.1:{port}", progress=False, timeout=5)
    _assert_empty(tmp_path)


def test_offline_cli_download_names_url_env_and_checksum(tmp_path, capsys):
    """Offline: the error says how to use a mirror (--url, NCF_DOWNLOAD_URL, NAME.zip.md5), and no
    data directory is created."""
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "ml-100k", "--data-dir", str(tmp_path / "data"), "--url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "cannot connect" in err
    assert "--url BASE" in err and "NCF_DOWNLOAD_URL" in err and "BASE/ml-100k.zip.md5" in err
    assert not (tmp_path / "data").exists()


def test_missing_archive_and_checksum(server, ml100k_zip, tmp_path):
    with pytest.raises(DownloadError, match=r"no published checksum and none known for ml-latest-small"):
        download("ml-latest-small", tmp_path, server.url, progress=False)
    server.files["/ml-100k.zip.md5"] = f"{hashlib.md5(ml100k_zip).hexdigest()}  ml-100k.zip\n".encode()
    with pytest.raises(DownloadError, match=r"/ml-100k\.zip: HTTP 404"):
        download("ml-100k", tmp_path, server.url, progress=False)
    # no checksum file beside the zip: the embedded GroupLens value applies, and our test zip differs
    server.publish("ml-100k", ml100k_zip, md5=False)
    del server.files["/ml-100k.zip.md5"]
    # a mirror serving its own archive is told how to make it acceptable
    with pytest.raises(DownloadError, match=rf"is not GroupLens' {KNOWN_MD5['ml-100k']} .* no ml-100k\.zip\.md5: "
                       r"a mirror serving its own archive must serve its MD5 beside it"):
        download("ml-100k", tmp_path, server.url, progress=False)
    server.publish("ml-100k", ml100k_zip)  # ... which then installs
    assert (download("ml-100k", tmp_path / "ok", server.url, progress=False) / "u.data").is_file()
    server.files["/ml-100k.zip.md5"] = f"{KNOWN_MD5['ml-100k']}  ml-100k.zip\n".encode()
    with pytest.raises(DownloadError, match=r"does not match the published .* \(from http.*\.zip\.md5; corrupted"):
        download("ml-100k", tmp_path, server.url, progress=False)
    shutil.rmtree(tmp_path / "ok")
    server.files["/ml-100k.zip.md5"] = b"<html>moved</html>"
    with pytest.raises(DownloadError, match="no MD5 checksum in the file"):
        download("ml-100k", tmp_path, server.url, progress=False)
    _assert_empty(tmp_path)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_bad_archives_are_refused(server, tmp_path):
    server.publish("ml-100k", b"this is not a zip")
    with pytest.raises(DownloadError, match="not a valid zip archive"):
        download("ml-100k", tmp_path, server.url, progress=False)
    server.publish("ml-100k", _zip({"ml-100k/README": b"hi"}))
    with pytest.raises(DownloadError, match="holds no u.data; not installed"):
        download("ml-100k", tmp_path, server.url, progress=False)
    server.publish("ml-100k", _zip({"ml-100k/u.data": b"1\t2\t3\t4\n", "../evil": b"x"}))
    with pytest.raises(DownloadError, match="unsafe member path '../evil'"):
        download("ml-100k", tmp_path, server.url, progress=False)
    _assert_empty(tmp_path)
    assert not (tmp_path.parent / "evil").exists()


def test_archive_with_another_top_folder(server, tmp_path):
    server.publish("ml-10m", _zip({"ml-10M100K/ratings.dat": b"1::2::5::9\n"}))
    folder = download("ml-10m", tmp_path, server.url, progress=False)
    assert (folder / "ratings.dat").read_text() == "1::2::5::9\n" and folder == tmp_path / "ml-10m"


def test_name_and_folder_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'ml-5m' to download; choose one of ml-100k"):
        download("ml-5m", tmp_path)
    (tmp_path / "ml-100k").mkdir()
    with pytest.raises(DataError, match="exists but holds no u.data: remove it or download with --force"):
        download("ml-100k", tmp_path)


def test_missing_dataset_is_downloaded_on_use(server, ml100k_zip, tmp_path, monkeypatch):
    server.publish("ml-100k", ml100k_zip)
    monkeypatch.setenv("NCF_DOWNLOAD_URL", server.url)
    ds = load_dataset(DataConfig(source="ml-100k", data_dir=str(tmp_path), valid=False))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100_000)


def test_cli_download(server, ml100k_zip, tmp_path, capsys):
    server.publish("ml-100k", ml100k_zip)
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "ml-100k", "--data-dir", str(tmp_path), "--url", server.url])
    assert e.value.code == 0
    assert f"ml-100k: ready in {tmp_path / 'ml-100k'}" in capsys.readouterr().out
    server.truncate["/ml-100k.zip"] = 10
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "ml-100k", "--data-dir", str(tmp_path), "--url", server.url, "--force"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "truncated" in err and err.count("\n") == 1
