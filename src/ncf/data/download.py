"""Download MovieLens archives from GroupLens: checksum verified, unpacked atomically.

``download("ml-100k")`` fetches ``BASE/ml-100k.zip`` into a temporary folder inside the
data directory, checks its MD5 against the checksum GroupLens publishes beside it
(``BASE/ml-100k.zip.md5``; where that file cannot be had, the value embedded below for the
fixed releases), verifies every member's CRC, unpacks it there and renames the result to
``DATA_DIR/ml-100k`` in one step. On any failure (server down, HTTP error, a truncated or
corrupted download, a bad archive) the temporary folder is removed: nothing half-written
is left behind, and an existing dataset folder is untouched.

``BASE`` is ``https://files.grouplens.org/datasets/movielens``, or ``$NCF_DOWNLOAD_URL``,
or the ``base_url`` argument (a mirror, or a loopback server in the tests).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ncf.data.readers import DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens"
ENV_URL = "NCF_DOWNLOAD_URL"
CHUNK = 1 << 20

# name -> file that must be inside the unpacked folder (the ratings file the readers use)
ARCHIVES = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-10m": "ratings.dat",
    "ml-20m": "ratings.csv",
    "ml-25m": "ratings.csv",
    "ml-latest-small": "ratings.csv",
    "ml-latest": "ratings.csv",
}
# MD5 of the fixed releases as GroupLens publishes them (NAME.zip.md5), used only where that
# file cannot be fetched. The "latest" archives are re-issued, so no value is pinned for them.
KNOWN_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}


class DownloadError(DataError):
    """A download that could not be completed or verified; nothing was installed."""


def base_url(explicit: str | None = None) -> str:
    return (explicit or os.environ.get(ENV_URL) or BASE_URL).rstrip("/")


def data_dir(explicit: str | Path | None = None) -> Path:
    """Where datasets live: ``explicit`` (``--data-dir``), else ``$NCF_DATA_DIR``, else ``~/.cache/ncf``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("NCF_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ncf"


def archive_url(name: str, base: str | None = None) -> str:
    return f"{base_url(base)}/{name}.zip"


def _check_name(name: str) -> None:
    if name not in ARCHIVES:
        raise DataError(f"unknown dataset {name!r} to download; choose one of {', '.join(ARCHIVES)}")


def _open(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - http(s) URLs we build
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: cannot connect ({e.reason}); is the network (or the server) up?") from None
    except TimeoutError:
        raise DownloadError(f"{url}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f"{url}: {e}") from None


def published_md5(name: str, base: str | None = None, timeout: float = 30.0) -> tuple[str, str]:
    """(expected md5, where it came from): ``NAME.zip.md5`` beside the archive, else the
    embedded value. A server that is down is an error here already."""
    url = archive_url(name, base) + ".md5"
    try:
        with _open(url, timeout) as resp:
            text = resp.read(4096).decode("ascii", "replace")
    except DownloadError as e:
        if "HTTP 404" not in str(e) and "HTTP 403" not in str(e):
            raise
        if name in KNOWN_MD5:
            return KNOWN_MD5[name], "embedded (no checksum file at " + url + ")"
        raise DownloadError(
            f"{url}: no published checksum and none known for {name}; refusing to install unverified data"
        ) from None
    m = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not m:
        raise DownloadError(f"{url}: no MD5 checksum in the file (got {text[:80]!r})")
    return m.group(1).lower(), url


def _fetch(url: str, dest: Path, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``dest``; returns the MD5 hex digest. A body shorter than its
    Content-Length (a dropped connection) is an error."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from ncf.console import console as _console

    md5 = hashlib.md5()  # noqa: S324 - the checksum GroupLens publishes
    got = 0
    with _open(url, timeout) as resp:
        size = resp.headers.get("Content-Length")
        total = int(size) if size and size.isdigit() else None
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        console = _console
        show = progress and console.is_terminal  # a bar only where someone watches; logs stay clean
        with Progress(*columns, console=console, disable=not show, transient=True) as bar, \
                open(dest, "wb") as out:
            task = bar.add_task(f"download {url.rsplit('/', 1)[-1]}", total=total)
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except http.client.IncompleteRead as e:
                    got += len(e.partial)
                    raise DownloadError(
                        f"{url}: download truncated after {got:,} of {total or '?'} bytes (connection dropped)"
                    ) from None
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(f"{url}: download failed after {got:,} bytes ({e})") from None
                if not chunk:
                    break
                out.write(chunk)
                md5.update(chunk)
                got += len(chunk)
                bar.update(task, advance=len(chunk))
    if total is not None and got != total:
        raise DownloadError(f"{url}: download truncated: {got:,} of {total:,} bytes")
    return md5.hexdigest()


def _unpack(archive: Path, into: Path, name: str) -> Path:
    """Extract a verified zip into ``into``; returns the folder holding the ratings file."""
    marker = ARCHIVES[name]
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = PurePosixPath(member).parts
                if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DownloadError(f"{name}.zip: unsafe member path {member!r}; not unpacked")
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{name}.zip: member {bad!r} fails its CRC check (corrupt archive)")
            zf.extractall(into)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{name}.zip: not a valid zip archive ({e})") from None
    for folder in (into / name, into):
        if (folder / marker).is_file():
            return folder
    tops = [p for p in into.iterdir() if p.is_dir()]
    if len(tops) == 1 and (tops[0] / marker).is_file():  # e.g. ml-10m.zip unpacks to ml-10M100K/
        return tops[0]
    raise DownloadError(f"{name}.zip holds no {marker}; not installed")


def _md5_mismatch(url: str, name: str, actual: str, expected: str, source: str) -> str:
    """Why an archive's MD5 is refused: against the server's own ``.md5`` file, a corrupted
    download; against the GroupLens value (no ``.md5`` on the server), maybe a mirror's own archive."""
    if source.startswith("embedded"):
        return (f"{url}: MD5 {actual} is not GroupLens' {expected} for {name}.zip, and the server has no "
                f"{name}.zip.md5: a mirror serving its own archive must serve its MD5 beside it (as "
                f"{url}.md5, e.g. `md5sum {name}.zip > {name}.zip.md5`); nothing installed")
    return (f"{url}: MD5 {actual} does not match the published {expected} (from {source}; corrupted or tampered "
            "download); nothing installed")


def offline_hint(name: str) -> str:
    """What to do where the archive server cannot be reached."""
    return (f"offline or behind a firewall: pass --url BASE (or set {ENV_URL}=BASE) for a mirror serving "
            f"BASE/{name}.zip and its MD5 as BASE/{name}.zip.md5, or unpack {name}.zip yourself into "
            f"DATA_DIR/{name}/ (--data-dir or $NCF_DATA_DIR)")


def download(name: str, root: str | Path | None = None, base_url: str | None = None, *,
             force: bool = False, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch, verify and unpack dataset ``name`` into ``root/name``; returns that folder.

    An already complete folder is returned as is (``force=True`` replaces it). ``root``
    defaults to the data directory (``$NCF_DATA_DIR``, else ``~/.cache/ncf``).
    """
    _check_name(name)
    root = data_dir(root)
    dest = root / name
    marker = ARCHIVES[name]
    if dest.exists() and not force:
        if (dest / marker).is_file():
            return dest
        raise DataError(f"{dest} exists but holds no {marker}: remove it or download with --force")
    url = archive_url(name, base_url)
    expected, source = published_md5(name, base_url, timeout)  # first: offline, nothing is created
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data directory {root} ({e})") from None
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.download-") as tmp:
        tmp_dir = Path(tmp)
        archive = tmp_dir / f"{name}.zip"
        actual = _fetch(url, archive, progress, timeout)
        if actual != expected:
            raise DownloadError(_md5_mismatch(url, name, actual, expected, source))
        folder = _unpack(archive, tmp_dir / "unpacked", name)
        if dest.exists():  # force: move the old folder aside, into the temporary dir removed below
            dest.rename(tmp_dir / "previous")
        try:
            folder.rename(dest)
        except OSError:
            if (dest / marker).is_file():  # another process installed it meanwhile
                return dest
            raise
    return dest

