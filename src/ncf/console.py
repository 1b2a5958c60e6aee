"""Where ncf talks to people: one rich console on stderr for progress and logs, one on stdout
for tables. Output that is not a terminal (a log file, a pipe, a notebook capture) is never
wrapped at 80 columns: lines stay whole for grep."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console


def make_console(stderr: bool = True) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=200)


console = make_console(stderr=True)  # progress and logs
tables = make_console(stderr=False)  # tables a command prints as its result


@contextmanager
def quiet(on: bool = True):
    """Silence ncf's progress and log output for the block (``ncf.fit(..., progress=False)``)."""
    before = console.quiet
    console.quiet = before or on
    try:
        yield
    finally:
        console.quiet = before
