"""Progress of slow steps, reported by library code through one hook that a front end installs.

Library code never prints: it wraps a slow step in `step(...)` ("converting X to OpenVINO IR (first run only)",
"downloading REPO") and, where progress can be counted, calls `advance`. With no reporter installed (the Python
API, the server) nothing is shown. The CLI installs `aipc.cli.progress.TerminalReporter`: a spinner with the
step's name and elapsed time, a bar where the total is known, and nothing when stderr is not a terminal.

`verbose()` tells library code whether the user asked to see other tools' own output (their progress bars and
logs); without it, that output is hidden.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Step:
    """A step in progress: `done` of `total` units (bytes when `unit` is "B"); total None when unknown."""

    name: str
    total: float | None = None
    unit: str = ""
    keep: bool = False  # report the finished step (with its time) once it ends, not just while it runs
    done: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Reporter(Protocol):
    """What a front end implements to show steps; called from any thread."""

    verbose: bool

    def start(self, step: Step) -> None: ...

    def update(self, step: Step) -> None: ...

    def finish(self, step: Step, ok: bool) -> None: ...


_reporter: Reporter | None = None
_lock = threading.Lock()


def install(reporter: Reporter | None) -> Reporter | None:
    """Install `reporter` (None removes it); the previous one is returned."""
    global _reporter
    with _lock:
        previous, _reporter = _reporter, reporter
    return previous


def verbose() -> bool:
    """Whether other tools' own output (progress bars, logs) should be shown."""
    return bool(_reporter is not None and getattr(_reporter, "verbose", False))


@contextlib.contextmanager
def step(name: str, *, total: float | None = None, unit: str = "", keep: bool = False) -> Iterator[Step]:
    """Report `name` while the block runs. Call `advance(s, n)` to count progress toward `total`."""
    reporter = _reporter
    current = Step(name, total, unit, keep)
    if reporter is None:
        yield current
        return
    reporter.start(current)
    ok = False
    try:
        yield current
        ok = True
    finally:
        reporter.finish(current, ok)


def advance(current: Step, n: float = 1, *, total: float | None = None) -> None:
    """Count `n` more units done (and, when it becomes known or grows, the total)."""
    current.done += n
    if total is not None:
        current.total = total
    reporter = _reporter
    if reporter is not None:
        reporter.update(current)


def counter(current: Step) -> Callable[[float], None]:
    """`advance` bound to one step, for callbacks that report how much more was done."""
    return lambda n: advance(current, n)
