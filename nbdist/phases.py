"""What a run is doing before any worker can say so: "importing torch…", "loading the pipeline: 3 of 5 components".

The first run in a kernel spends most of its wait in the kernel itself (imports, loading the model on
the CPU) before a worker exists to send a message, and a blank cell for that long looks like a hang.
``generate`` installs a reporter for the duration of its planning; the code that does the slow parts
(``warm_imports.wait``, ``pipelines.load_pipeline``) calls ``report``. A context variable carries the
reporter down, so the planning code in between takes no extra parameter, and a load outside
``generate`` (workers under torchrun, tests, the CLI's own loads) reports to nobody.

Neutral ground: imported by the parent and by code workers share; imports nothing of nbdist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["current", "listening", "report", "reporting"]

PhaseReporter = Callable[[str], None]

_REPORTER: ContextVar[PhaseReporter | None] = ContextVar("nbdist_phase_reporter", default=None)


def report(text: str) -> None:
    """Tell whoever shows this run what it is doing now (nothing if no one listens)."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(text)


def current() -> PhaseReporter | None:
    """This context's reporter, for work that reports from threads of its own (they start without it)."""
    return _REPORTER.get()


def listening() -> bool:
    """A reporter is installed: worth working out details (a component count) only then."""
    return _REPORTER.get() is not None


@contextlib.contextmanager
def reporting(reporter: PhaseReporter | None) -> Iterator[None]:
    """Send ``report`` calls made in this context (this thread) to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)
