"""How a worker process ended, said in one line: the same words for every backend's deaths."""

from __future__ import annotations

import signal
from dataclasses import dataclass

__all__ = ["WorkerExit"]


@dataclass(frozen=True)
class WorkerExit:
    """A worker process that ended with a non-zero status before the run was over."""

    rank: int
    pid: int
    exitcode: int | None  # negative: killed by that signal (multiprocessing's convention)

    def describe(self) -> str:
        """``killed by SIGKILL (out of memory?)`` or ``exited with status 3``."""
        code = self.exitcode
        if code is None:
            return "vanished"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory, or killed by hand?)" if -code == signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        if code > 128 and code - 128 in {s.value for s in signal.Signals}:
            return f"stopped by {signal.Signals(code - 128).name}"
        return f"exited with status {code}"
