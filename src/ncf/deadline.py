"""Time limits of a fit: ``cfg.deadline`` (a ``time.monotonic()`` value, or None for none) set
by ``ncf tune`` on every trial's TrainConfig. Iterative fits check it between iterations
(:class:`Steps`) and raise :class:`ncf.errors.TrialTimeout`; nothing else reads it.

A model with its own loop reads the limit as ``getattr(cfg, "deadline", None)`` and calls
``Steps(deadline, total, what).done(k)`` after its k-th iteration (1-based): that raises once
the deadline has passed, or as soon as the iterations left would not finish in the time left
at the mean pace so far (a fit that cannot finish stops after one iteration, not at the
deadline), and prints a line at most every ``LOG_EVERY`` seconds so that a long fit is not
silent."""

from __future__ import annotations

import time

from ncf.errors import TrialTimeout

LOG_EVERY = 15.0  # seconds between progress lines of a slow iterative fit


def deadline_of(cfg) -> float | None:
    """The ``deadline`` of a TrainConfig (or anything with that attribute), else None."""
    d = getattr(cfg, "deadline", None)
    return None if d is None else float(d)


def check(deadline: float | None, what: str) -> None:
    """Raise :class:`TrialTimeout` when ``deadline`` (monotonic seconds) has passed."""
    if deadline is not None and time.monotonic() >= deadline:
        raise TrialTimeout(f"{what}: time limit reached")


class Steps:
    """Deadline and progress of a loop of ``total`` iterations (see the module docstring).
    ``project=False`` for a loop that may end early (an epoch loop with early stopping): only the
    deadline itself stops it, not the pace."""

    def __init__(self, deadline: float | None, total: int, what: str, unit: str = "iterations",
                 project: bool = True):
        self.deadline, self.total, self.what, self.unit, self.project = deadline, int(total), what, unit, project
        self.t0 = self.last_log = time.monotonic()
        check(deadline, f"{what}: not started")

    def done(self, k: int) -> None:
        """``k`` of ``total`` iterations are done: raise :class:`TrialTimeout` when the rest would
        not finish by the deadline; print a progress line now and then."""
        now = time.monotonic()
        per = (now - self.t0) / max(k, 1)
        if now - self.last_log >= LOG_EVERY:
            from ncf.console import console

            console.print(f"  {self.what}: {k}/{self.total} {self.unit}, {now - self.t0:.0f} s "
                          f"({per:.1f} s each)")
            self.last_log = now
        if self.deadline is None or k >= self.total:
            return
        left, need = self.deadline - now, per * (self.total - k)
        if left <= 0:
            raise TrialTimeout(f"{self.what}: time limit reached after {k} of {self.total} {self.unit}")
        if self.project and need > left:
            raise TrialTimeout(f"{self.what}: stopped after {k} of {self.total} {self.unit}: the other "
                               f"{self.total - k} would take about {need:.0f} s, {left:.0f} s are left")
