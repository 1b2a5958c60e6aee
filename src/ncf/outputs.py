"""Where ncf writes: one rule for every output directory and file (docs/RELIABILITY.md).

Directories (a run, a study of ``ncf tune``, a comparison of ``ncf compare``):

- written only if absent, empty, or a directory of the same *kind* that ncf wrote (recognised
  by its files, :data:`KINDS`); replacing one needs ``overwrite`` (a study or a comparison is
  continued instead, as ``ncf tune`` / ``ncf compare`` rerun on it);
- anything in it that is not one of that kind's own files (a dataset, notes, other runs) is
  never deleted: the directory is refused, naming what is there;
- while it is written, ``.NAME.lock`` beside it holds the writer's pid and host under an
  ``flock``: a second writer is told which process holds it; the kernel drops the lock of a
  process that died, so the next writer takes it over.

Files (``ncf export --out``, ``ncf plot items --out``, ...): an existing file is replaced only
with ``overwrite``; a file inside a run directory only under the writer's own name there
(``RUN/model.onnx``), never a run's own files (``RUN/model.safetensors``).

Every write goes to a temporary file in the same folder, renamed into place when whole; a full
disk, a read-only folder or a missing permission is one :class:`~ncf.errors.WriteError` line
naming the path, with nothing half-written left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ncf.errors import NcfError, RunExistsError, WriteError

# the kinds of directory ncf writes: the files (and folders) that are its own, and the ones
# that say a directory is of that kind
RUN_FILES = frozenset({
    # training
    "config.json", "model.safetensors", "idmap.json", "train.safetensors", "items.json", "summary.json",
    "state.safetensors", "metrics.jsonl", "curves.png", "init_items.json", "shards", "pretrain-gmf",
    "pretrain-mlp",
    # derived from the run by other commands (stale once it is replaced)
    "model.onnx", "items.png", "rerank.json", "ann.faiss", "ann.json", "foldin.json", "cold_prior.json",
})
STUDY_FILES = frozenset({"tune.json", "study.sqlite3", "study.sqlite3-journal", "study.sqlite3-wal",
                         "study.sqlite3-shm", "summary.json", "best", "trials.csv", "tune.png", "runs"})
COMPARISON_FILES = frozenset({"results.json", "tuning.json", "results.md", "results.png", "runs"})
MARKER = ".ncf-kind"  # written into a new study or comparison: its kind, before anything else

KINDS = {
    "run": (RUN_FILES, ("config.json",)),
    "study": (STUDY_FILES, ("tune.json", "study.sqlite3")),
    "comparison": (COMPARISON_FILES, ("results.json", "tuning.json")),
}
WHAT = {"run": "a run", "study": "a study of ncf tune", "comparison": "a comparison of ncf compare"}
SHOWN = 4  # names listed in a refusal


def _own(name: str, kind: str) -> bool:
    """``name`` (an entry of a directory) is one of ``kind``'s own files, or a temporary one of ncf's."""
    if name.startswith(".") and name.endswith((".partial", ".lock")):  # a sub-run's, being written
        name = name[1:].rsplit(".", 1)[0]
    return name in KINDS[kind][0] or name == MARKER or name.endswith(".tmp")


def kind_of(directory: Path) -> str | None:
    """The kind of ncf output ``directory`` is (``run``, ``study``, ``comparison``), else None."""
    directory = Path(directory)
    marker = directory / MARKER
    if marker.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            kind = marker.read_text().strip()
            if kind in KINDS:
                return kind
    cfg = directory / "config.json"
    if cfg.is_file():
        with contextlib.suppress(OSError, ValueError):
            obj = json.loads(cfg.read_text())
            if isinstance(obj, dict) and "format" in obj and "model" in obj:
                return "run"
    for kind in ("study", "comparison"):
        if any((directory / f).exists() for f in KINDS[kind][1]):
            return kind
    return None


def _name(entry: str, directory: Path) -> str:
    path = directory / entry
    if not path.is_dir():
        return entry
    kind = kind_of(path)
    return f"{entry}/ ({WHAT[kind]})" if kind else f"{entry}/"


def _names(entries: list[str], directory: Path) -> str:
    shown = [_name(e, directory) for e in sorted(entries)[:SHOWN]]
    more = len(entries) - SHOWN
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def prepare_output_dir(path: str | Path, kind: str, overwrite: bool = False, flag: str = "--out",
                       resume: bool = False, hint: str = "pass --overwrite") -> Path:
    """Check that ``path`` may be written as an output directory of ``kind`` (module docstring):
    absent, empty, or ``kind``'s own files only and ``overwrite`` (``resume``: a directory of
    ``kind`` is continued without it). Raises :class:`RunExistsError` naming what is in the way;
    writes nothing."""
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    if path.name in ("", ".", "..") or path.resolve() == Path.cwd():
        raise RunExistsError(f"{flag} {path}: name the output directory itself (e.g. runs/gmf), not the current one")
    if path.exists() and not path.is_dir():
        raise RunExistsError(f"{flag} {path}: is a file, not a directory; name a new directory")
    if not path.is_dir():
        return path
    try:
        entries = [e.name for e in path.iterdir()]
    except OSError as e:
        raise WriteError(f"{flag} {path}: cannot be read ({e.strerror}); name another directory") from None
    entries = [e for e in entries if e != MARKER]
    if not entries:
        return path
    found = kind_of(path)
    if found != kind:
        what = f"holds {WHAT[found]}" if found else f"holds files ncf did not write ({_names(entries, path)})"
        raise RunExistsError(f"{flag} {path}: {what}; name a new or empty directory for {WHAT[kind]}")
    foreign = [e for e in entries if not _own(e, kind)]
    if foreign:
        raise RunExistsError(f"{flag} {path}: besides {WHAT[kind]} it holds files ncf did not write "
                             f"({_names(foreign, path)}); nothing is deleted: move them out, or name a new directory")
    if not overwrite and not resume:
        raise RunExistsError(f"{flag} {path}: already holds {WHAT[kind]}; {hint} to replace it")
    return path


def mark(directory: Path, kind: str) -> None:
    """Create ``directory`` (and its parents) as an output of ``kind``, writing its marker."""
    directory = Path(directory)
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / MARKER).exists():
            atomic_write_bytes(directory / MARKER, (kind + "\n").encode())


def run_of(path: Path) -> Path | None:
    """The run directory ``path`` lies in (its folder or one above), else None."""
    for parent in Path(path).resolve().parents:
        if kind_of(parent) == "run":
            return parent
        if parent == parent.parent:
            break
    return None


def prepare_output_file(path: str | Path, overwrite: bool = False, flag: str = "--out",
                        run_name: str | None = None) -> Path:
    """Check that ``path`` may be written as an output file (module docstring); create its
    folder where missing. ``run_name``: the one name this writer's file has inside a run
    directory (``model.onnx``), replaced there without ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise RunExistsError(f"{flag} {path}: is a directory; name a file")
    run = run_of(path)
    in_run = run is not None and path.resolve().parent == run and path.name == run_name
    if run is not None and not in_run:
        allowed = f" (or {run / run_name})" if run_name else ""
        raise RunExistsError(f"{flag} {path}: lies in the run directory {run}, whose files are the run's own; "
                             f"name a file outside it{allowed}")
    if path.exists() and not overwrite and not in_run:
        raise RunExistsError(f"{flag} {path}: exists; pass --overwrite to replace it, or name another file")
    with writing(path.parent):  # said now, before the work: a folder that cannot be created or written
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = tmp_path(path)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        probe.unlink()
    return path


# --- writing: a temporary file in the same folder, renamed into place when whole ------------

_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.ENOENT: "no such folder",
            errno.ENOTDIR: "a part of the path is a file"}


def reason(e: BaseException) -> str:
    """A short reason for a failed write: an OSError's, or a safetensors error's (whose message
    carries the OS error, e.g. ``StorageFull``)."""
    if isinstance(e, OSError) and e.errno in _REASONS:
        return _REASONS[e.errno]
    text = str(e)
    if "StorageFull" in text or "No space left" in text or "os error 28" in text:
        return "no space left on the device"
    if "ReadOnlyFilesystem" in text or "os error 30" in text:
        return "read-only file system"
    if "PermissionDenied" in text or "os error 13" in text:
        return "permission denied"
    return (getattr(e, "strerror", None) or text.splitlines()[0] if text else type(e).__name__)


def _write_failures() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - a dependency of ncf
        return (OSError,)
    return (OSError, SafetensorError)


DISK = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})  # the disk's fault, whatever was written


@contextlib.contextmanager
def writing(path: Path, cleanup: Path | None = None, errnos: frozenset[int] | None = None) -> Iterator[None]:
    """Turn a failed write under ``path`` (full disk, read-only folder, no permission, missing
    folder) into one :class:`WriteError` line; ``cleanup``: a temporary file to remove then;
    ``errnos``: only OS errors of these numbers (default: any)."""
    try:
        yield
    except NcfError:  # ncf's own refusals (RunExistsError is an OSError too) pass unchanged
        raise
    except _write_failures() as e:
        if errnos is not None and isinstance(e, OSError) and e.errno not in errnos:
            raise
        if cleanup is not None:
            with contextlib.suppress(OSError):
                cleanup.unlink()
        where = getattr(e, "filename", None) or path
        raise WriteError(f"cannot write {where}: {reason(e)}; nothing was half-written (free space or choose "
                         "a writable folder, then run it again)") from None


def tmp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before it is renamed into place."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path`` (a reader
    sees the old file or the new one, never half of one)."""
    path = Path(path)
    tmp = tmp_path(path)
    with writing(path, cleanup=tmp):
        write(tmp)
        os.replace(tmp, path)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


# --- the writer's lock ---------------------------------------------------------------------

def lock_path(directory: Path) -> Path:
    """``.NAME.lock`` beside the directory ``NAME``."""
    directory = Path(directory)
    return directory.parent / f".{directory.name}.lock"


def _holder(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        obj = json.loads(path.read_text() or "{}")
        if isinstance(obj, dict):
            return obj
    return {}


class OutputLock:
    """The writer's lock on an output directory (module docstring): ``with OutputLock(dir):``."""

    def __init__(self, directory: str | Path, flag: str = "--out"):
        self.directory, self.flag = Path(directory), flag
        self.path = lock_path(self.directory)
        self.fd: int | None = None
        self.took_over: dict | None = None  # the dead holder whose lock file was found

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock, as before it existed
            return self
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    self._refuse()
                try:  # the file may have been removed by its last holder since it was opened
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            old = _holder(self.path)
            if old.get("pid"):
                self.took_over = old
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
            os.fsync(fd)
        self.fd = fd
        return self

    def _refuse(self):
        h = _holder(self.path)
        who = f"process {h.get('pid', '?')} on {h.get('host', '?')}"
        if h.get("since"):
            who += f" (since {h['since']})"
        raise RunExistsError(f"{self.flag} {self.directory}: being written by {who}, which holds {self.path}; "
                             "wait for it to finish or stop it, then run this again")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def save_figure(fig, path: str | Path, **kw) -> Path:
    """``fig.savefig`` through :func:`atomic_write` (the format from ``path``'s suffix, else PNG)."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kw))
