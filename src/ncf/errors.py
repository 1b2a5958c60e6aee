"""ncf's own error types: mistakes a user can make and fix (a bad file, flag, id or run
directory). The CLI prints these as one line and exits with status 2; any other exception
is a bug in ncf and keeps its traceback.

Each also derives from the built-in type it refines (``ValueError``, ``KeyError``), so
``except ValueError`` in callers keeps working."""

from __future__ import annotations


class NcfError(Exception):
    """Base of every error a user can cause."""

    def __str__(self) -> str:  # KeyError would quote its message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(NcfError, ValueError):
    """An option or parameter out of range, refused or unknown."""


class DataError(NcfError, ValueError):
    """A data file that cannot be read as asked (names file:line and field)."""


class CheckpointError(NcfError, ValueError):
    """A run directory that is missing, corrupt or does not match."""


class UnknownIdError(NcfError, KeyError):
    """A raw id that the model does not know, where it must."""


class RunExistsError(CheckpointError, FileExistsError):
    """A run directory (or a file) is in the way of a new run and is not to be replaced."""


class WriteError(NcfError, OSError):
    """An output that cannot be written: a full disk, a read-only folder, no permission
    (nothing half-written is left behind)."""


class TrialTimeout(NcfError, TimeoutError):
    """A fit stopped (or not started) because it would run past its time limit (``deadline``:
    a ``time.monotonic()`` value, set by ``ncf tune`` for every trial)."""
