"""A failure of the pool's own work, said in one line: which step of driving the workers failed, and why.

The pool thread alone ends runs, so an exception there must not end the thread: it ends the run with
this line (the full traceback one attribute away, ``res.worker_failures[i].traceback``), the workers
are replaced, and the next run starts afresh.
"""

from __future__ import annotations

import traceback

from ...errors import NbdistUsageError
from ..results.result import WorkerFailure

__all__ = ["IDLE", "failure", "one_line"]

IDLE = "the pool"  # the step named when the failure was in the pool's own bookkeeping


def one_line(exc: BaseException) -> str:
    """``TypeError: cannot pickle '_thread.lock' object``: the first line only (Ray's errors run for pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def failure(stage: str, exc: BaseException) -> WorkerFailure:
    """The run's record of the failure: ``stage failed: Error: text``, with the traceback kept."""
    if isinstance(exc, NbdistUsageError):  # a refusal found late (a busy cluster): its line says it all
        return WorkerFailure(-1, str(exc))
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return WorkerFailure(-1, f"{stage} failed: {one_line(exc)}", text)
