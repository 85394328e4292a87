"""``nbdist.generate()`` called in a notebook: one text line in the cell, updated in place while it runs.

The terminal's progress line (``terminal.py``) redraws itself with ``\\r`` and ANSI codes, which a
notebook shows as a growing pile of lines; the live gallery belongs to ``%%distgen``. Without either a
``generate()`` cell stayed blank until it returned. This observer shows a plain-text status in the
cell's output and replaces it (``update_display``) as images arrive, throttled, ending with the run's
one-line summary, or with nothing when the cell shows the result (its static gallery says the summary).
Parent side only: it runs in the kernel, never in a worker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ...messages import ImageFailed, ImageReady, Message, StepProgress, WorkerStarted
from ..results.observer import RunInfo

__all__ = ["TextStatus"]


class TextStatus:
    """A ``RunObserver`` drawing ``nbdist: 3 of 12 images, 2.4 s, 2 workers on cpu`` as one display."""

    def __init__(self, *, interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._id = f"nbdist-status-{uuid.uuid4().hex}"
        self._interval = interval
        self._clock = clock
        self._shown = False
        self._last = 0.0
        self._started = clock()
        self._total = 0
        self._where = ""
        self._done = 0
        self._failed = 0
        self._ready = 0
        self._phase = ""
        self._lock = threading.Lock()  # phases come from the caller's thread, messages from the collector's

    def on_phase(self, text: str) -> None:
        """What happens before the first image ("importing torch…", "loading the pipeline…")."""
        self._phase = text
        self._show(force=True)

    def on_start(self, run: RunInfo) -> None:
        self._total = len(run.jobs)
        self._started = run.started if run.started is not None else self._clock()
        workers = f"{run.num_processes} worker{'s' if run.num_processes != 1 else ''}"
        self._where = f"{workers} on {run.device_type}"
        self._show(force=True)

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, WorkerStarted):
            self._ready += 1
            self._phase = ""
        elif isinstance(msg, ImageReady):
            self._done += 1
        elif isinstance(msg, ImageFailed):
            self._failed += 1
        elif not isinstance(msg, StepProgress):
            return
        self._show()

    def on_end(self, result: Any) -> None:
        self._draw(f"nbdist: {result.summary()}" if result is not None else self.line())
        if result is not None:
            self._clear_if_shown(result)

    def _clear_if_shown(self, result: Any) -> None:
        """Empty the line once the cell shows ``result`` as its value: the static gallery's heading says
        the same summary right under it. Kept when the result is not shown (``r = nbdist.generate(...)``).

        Decided after the cell (IPython's ``post_run_cell``: ``info.result`` is what the cell displayed), once.
        """
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return

        def after(info: Any) -> None:
            shell.events.unregister("post_run_cell", after)
            if getattr(info, "result", None) is result:
                self._draw("")

        shell.events.register("post_run_cell", after)

    def line(self) -> str:
        """The status as it stands."""
        if not self._total:
            return f"nbdist: {self._phase or 'starting…'}"
        failed = f", {self._failed} failed" if self._failed else ""
        seconds = self._clock() - self._started
        head = f"nbdist: {self._done} of {self._total} images{failed}, {seconds:.1f} s, {self._where}"
        if self._phase and not self._done:
            return f"{head}: {self._phase}"
        return head

    def _show(self, force: bool = False) -> None:
        now = self._clock()
        if force or not self._shown or now - self._last >= self._interval:
            self._last = now
            self._draw(self.line())

    def _draw(self, text: str) -> None:
        from IPython.display import display, update_display

        bundle = {"text/plain": text}
        with self._lock:
            if self._shown:
                update_display(bundle, raw=True, display_id=self._id)
            else:
                display(bundle, raw=True, display_id=self._id)
                self._shown = True
