"""Long jobs that say how long they take, and refuse what would take longer than allowed.

Every tool whose cost a user sets (training epochs, importance samples, AIS steps and chains,
local-fit steps, gradient estimates in the labs) runs as a :func:`job`: a number of *units* of
work (draws × points, gradient evaluations, epochs) that it reports as it goes with
:meth:`Job.advance`. Under a :func:`budget` — the command line installs one for every command,
``--max-minutes`` (default :data:`DEFAULT_MAX_MINUTES`) and ``--no-progress`` — a job

* shows its progress on standard error: a bar with the elapsed time and an ETA on a terminal,
  otherwise one plain line at most every :data:`LINE_SECONDS` seconds (the first after
  :data:`QUIET_SECONDS`: a job that ends sooner prints nothing);
* refuses, in one line, to go on when its own rate so far projects it past the budget's
  deadline: the projection is made while the job is young (its first :data:`PROBE_FRACTION`
  or :data:`PROBE_SECONDS`), so a job that would take hours stops within seconds, with the
  estimate, the option that lowers its cost and the option that lifts the budget. Once a job
  is past its probe it is never refused.

Without a budget (the Python API, unless the caller opens one) a job costs one attribute test
per :meth:`~Job.advance` and prints nothing.

Jobs nest: a tool that reports in the units of a job already open *joins* it (the variance
lab opens one job of gradient estimates over all its settings, each setting's measurement
reports into it), so that the whole command is one bar and one projection; a job of other
units opened inside another (one setting of a lab that counts settings) is projected and
shown on its own, against the same deadline, and tells the enclosing job how far into its
current unit it is, so that the enclosing job's projection is made within seconds too.

The estimate is the measured rate times the units left: exact for work of equal-cost units
(the chunks of an importance-sampling loop), an overestimate where the first units carry
set-up costs (so a refusal is conservative by that much; the message shows the measurement).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from pyro_vae.errors import ConfigError

#: minutes a command may run by default before it is refused (``--max-minutes``)
DEFAULT_MAX_MINUTES = 60.0
#: a job is projected against the deadline while younger than this (seconds) ...
PROBE_SECONDS = 20.0
#: ... or than this fraction of its units
PROBE_FRACTION = 0.05
#: a projection from less than this many seconds refuses only work it puts past twice the budget
MIN_PROBE_SECONDS = 1.0
#: a job that ends within this many seconds prints nothing
QUIET_SECONDS = 2.0
#: seconds between plain progress lines when standard error is not a terminal
LINE_SECONDS = 10.0
#: seconds between redraws of the bar on a terminal
REDRAW_SECONDS = 0.2


class BudgetError(ConfigError):
    """A job would run past the time budget (``--max-minutes``)."""


def duration(seconds: float) -> str:
    """``seconds`` as a short human-readable duration: ``"42 s"``, ``"12 min"``, ``"3.4 h"``."""
    if not math.isfinite(seconds):
        return "forever"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


@dataclass
class Budget:
    """A deadline for everything run under it, and where progress goes.

    :param max_minutes: the wall time allowed from the budget's start (``None``: no limit).
    :param progress: whether jobs show their progress on ``stream``.
    :param lift: how the user raises the limit, named in a refusal.
    """

    max_minutes: float | None = DEFAULT_MAX_MINUTES
    progress: bool = True
    lift: str = "--max-minutes"
    stream: TextIO | None = None
    start: float = field(default_factory=lambda: time.monotonic())

    def __post_init__(self) -> None:
        if self.max_minutes is not None and not (
                isinstance(self.max_minutes, (int, float)) and not isinstance(
                    self.max_minutes, bool) and self.max_minutes > 0):
            raise ConfigError(f"{self.lift} must be a positive number of minutes, got "
                              f"{self.max_minutes!r}; e.g. {self.lift} 60")

    @property
    def deadline(self) -> float:
        return math.inf if self.max_minutes is None else self.start + 60.0 * self.max_minutes

    def out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("pyro_vae_budget",
                                                                       default=None)
_JOB: contextvars.ContextVar[Job | None] = contextvars.ContextVar("pyro_vae_job", default=None)


@contextlib.contextmanager
def budget(max_minutes: float | None = DEFAULT_MAX_MINUTES, progress: bool = True,
           lift: str = "--max-minutes", stream: TextIO | None = None) -> Iterator[Budget]:
    """Run the block under a time budget (module docstring); budgets do not nest: an inner one
    replaces the outer for its block."""
    b = Budget(max_minutes, progress, lift, stream)
    token = _BUDGET.set(b)
    try:
        yield b
    finally:
        _BUDGET.reset(token)


class Job:
    """``total`` units of work named ``what`` (module docstring). ``fix`` says how to make it
    cheaper, in the words a refusal ends with (e.g. ``"lower --iw-samples"``)."""

    def __init__(self, what: str, total: float, unit: str, fix: str,
                 budget: Budget | None, parent: Job | None = None, warmup: float = 0,
                 units_are_jobs: bool = False) -> None:
        self.what, self.total, self.unit, self.fix = what, float(total), unit, fix
        self.budget = budget
        self.parent = parent
        self.units_are_jobs = units_are_jobs
        self.done = 0.0
        #: units whose time does not count towards the rate (a first epoch that compiles)
        self.warmup = float(warmup)
        self._rate_from: tuple[float, float] | None = None if warmup > 0 else (0.0, 0.0)
        #: the fraction of one more unit done by the job nested in this one
        self.partial = 0.0
        self.start = time.monotonic()
        self.postfix = ""
        self._last_draw = -math.inf
        self._drawn = False

    # ----------------------------------------------------------------- reporting work
    def advance(self, units: float = 1.0) -> None:
        """``units`` more units are done: project the end, show progress."""
        self.done += units
        if self._rate_from is None and self.done >= self.warmup:
            self._rate_from = (time.monotonic() - self.start, self.done)
        self._update()

    def _update(self) -> None:
        if self.budget is None:
            return
        if self.parent is not None and self.parent.units_are_jobs:
            # the enclosing job, one of whose units this job is, learns how far into it it is
            self.parent.partial = min(1.0, self.done / self.total) if self.total > 0 else 1.0
            self.parent._update()
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < PROBE_SECONDS or self.progress < PROBE_FRACTION * self.total:
            self._check(now, elapsed)
        if self.budget.progress and elapsed >= QUIET_SECONDS and _JOB.get() is self:
            self._draw(now, elapsed)

    @property
    def progress(self) -> float:
        """Units done, counting the part of the next one that a nested job has done."""
        return self.done + self.partial

    def seconds_per_unit(self) -> float:
        """The rate measured so far, after the warm-up units (``nan`` before it can be)."""
        if self._rate_from is None:
            return math.nan
        t0, d0 = self._rate_from
        units = self.progress - d0
        return (time.monotonic() - self.start - t0) / units if units > 0 else math.nan

    def remaining_seconds(self) -> float:
        """The projected seconds left at the rate measured so far (``inf`` before it can be
        measured)."""
        per = self.seconds_per_unit()
        if math.isnan(per):
            return math.inf
        return per * max(0.0, self.total - self.progress)

    def _check(self, now: float, elapsed: float) -> None:
        assert self.budget is not None
        if math.isnan(self.seconds_per_unit()) or self.budget.max_minutes is None:
            return
        left = self.remaining_seconds()
        if left <= 0:
            return
        over = now + left - self.budget.deadline
        # a projection from a fraction of a second may still hold set-up costs: it refuses
        # only what it puts far past the deadline
        if over > 0 and (elapsed >= MIN_PROBE_SECONDS
                         or over > 60.0 * self.budget.max_minutes):
            whole = elapsed + left
            self.close()
            raise BudgetError(
                f"{self.what} would take about {duration(whole)} ({self._rate(elapsed)} "
                f"measured over its first {duration(elapsed)}), past the "
                f"{self.budget.max_minutes:g}-minute budget; {self.fix}, or raise "
                f"{self.budget.lift}")

    def _rate(self, elapsed: float) -> str:
        per = self.seconds_per_unit()
        return f"{per:.3g} s per {self.unit}" if per >= 1 else \
            f"{1 / per:.3g} {self.unit}s/s"

    def _line(self, elapsed: float) -> str:
        fraction = min(1.0, self.progress / self.total) if self.total > 0 else 1.0
        extra = f", {self.postfix}" if self.postfix else ""
        line = (f"{self.what}: {100 * fraction:5.1f}% ({self.done:g}/{self.total:g} "
                f"{self.unit}s), {duration(elapsed)} elapsed, "
                f"ETA {duration(self.remaining_seconds())}{extra}")
        outer = self.parent
        while outer is not None and outer.units_are_jobs:  # where this job stands in them
            line = (f"{outer.what} {outer.done + 1:g}/{outer.total:g} "
                    f"(ETA {duration(outer.remaining_seconds())}) · {line}")
            outer = outer.parent
        return line

    def _draw(self, now: float, elapsed: float, final: bool = False) -> None:
        assert self.budget is not None
        out = self.budget.out()
        tty = bool(getattr(out, "isatty", lambda: False)())
        gap = REDRAW_SECONDS if tty else LINE_SECONDS
        if not final and now - self._last_draw < gap:
            return
        self._last_draw = now
        line = self._line(elapsed)
        if tty:
            out.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            out.write(line + "\n")
        out.flush()
        self._drawn = True

    def close(self) -> None:
        """End the progress display (a last line if anything was shown)."""
        if self.budget is not None and self.budget.progress and self._drawn:
            now = time.monotonic()
            self._drawn = False
            self._draw(now, now - self.start, final=True)
            self._drawn = False


@contextlib.contextmanager
def job(what: str, total: float, unit: str, fix: str, warmup: float = 0,
        units_are_jobs: bool = False) -> Iterator[Job]:
    """Open a job of ``total`` ``unit``\\ s (module docstring), or join the open job that
    counts the same unit. The time of the first ``warmup`` units (a compilation, a set-up)
    is left out of the rate: the job is projected from the units after them.
    ``units_are_jobs``: each unit is one job nested in this one (a lab's settings), whose
    progress counts as the fraction of the unit done."""
    outer = _JOB.get()
    if outer is not None and outer.unit == unit:
        yield outer
        return
    j = Job(what, total, unit, fix, _BUDGET.get(), outer, warmup, units_are_jobs)
    token = _JOB.set(j)
    try:
        yield j
    finally:
        _JOB.reset(token)
        j.close()
        if outer is not None:
            outer.partial = 0.0


def report(units: float, unit: str) -> None:
    """``units`` of ``unit`` are done: advance the innermost open job if it counts that unit
    (a tool's inner loop that does not know whether a caller opened a job for it)."""
    current = _JOB.get()
    if current is not None and current.unit == unit:
        current.advance(units)
