"""Progress of a run on a terminal: one live line on a tty, plain lines anywhere else.

A redrawn line (``\\r``) is what a person at a terminal wants; in a log file, a CI job or under
``torchrun`` (several processes writing to the same terminal) it turns into garbage, so there each
event is one line of its own, optionally prefixed with the rank that printed it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ...messages import ImageFailed, ImageReady, Message, StepProgress, WorkerActivity, WorkerFinished, WorkerStarted
from ..results.observer import RunInfo
from .saving import file_name

__all__ = ["TerminalProgress"]

_BAR = 24


class TerminalProgress:
    """A ``RunObserver`` writing progress to ``stream`` (default: stderr, so stdout stays clean)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        live: bool | None = None,
        prefix: str = "",
        share_only: bool = False,
        interval: float = 0.1,
        summary: bool = False,
        files: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._stream = stream if stream is not None else sys.stderr
        self._live = live if live is not None else bool(getattr(self._stream, "isatty", lambda: False)())
        self._prefix = prefix
        self._total: int | None = None
        self._share_only = share_only  # under torchrun: count this process's share, not the whole run
        self._interval = interval
        self._jobs: dict[int, Any] = {}
        self._done = 0
        self._failed = 0
        self._step = ""
        self._started = self._clock()
        self._last_draw = 0.0
        self._drawn = False
        self._summary = summary  # end with the result's one-line summary (terminal IPython, scripts)
        self._files = files  # name images by their PNG file (the CLI writes them), else by index and prompt
        self._denoising_since: float | None = None  # the first step or image: loading excluded

    def on_start(self, run: RunInfo) -> None:
        self._jobs = {job.index: job for job in run.jobs}
        self._total = len(run.jobs)
        # From the generate() call when known (the kernel's imports and load are part of the wait).
        self._started = run.started if run.started is not None and self._clock is time.monotonic else self._clock()

    def on_phase(self, text: str) -> None:
        """What the run is doing before the workers report ("importing torch…"): on a tty only, as the live line.

        In a log every phase would be a line of its own for something that is over in seconds; the
        workers' "ready" lines and the summary say enough there.
        """
        if self._live:
            self._write(f"\r\x1b[K{self._prefix}nbdist: {text}")
            self._drawn = True

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, WorkerStarted):
            if self._share_only and msg.num_jobs >= 0:
                self._total = msg.num_jobs
            share = f", {msg.num_jobs} image(s)" if msg.num_jobs >= 0 else ""
            node = f" of node {msg.node[:8]}" if msg.node else ""
            self._event(f"worker {msg.rank} ready on {msg.device}{node}{share}")
        elif isinstance(msg, StepProgress):
            if self._denoising_since is None:
                self._denoising_since = self._clock()
            self._step = f"step {msg.step}/{msg.total}"
            self._draw()
        elif isinstance(msg, ImageReady):
            self._done += 1
            if self._denoising_since is None:
                self._denoising_since = self._clock()
            self._step = ""
            job = self._jobs.get(msg.index)
            if job is None:
                name = f"image {msg.index}"
            else:
                name = file_name(job) if self._files else f"#{msg.index} {job.prompt[:40]!r}"
            self._event(f"[{self._done + self._failed}/{self._total}] {name} (rank {msg.rank}, {msg.seconds:.2f} s)")
        elif isinstance(msg, ImageFailed):
            self._failed += 1
            self._event(f"[{self._done + self._failed}/{self._total}] image {msg.index} FAILED: {msg.error}")
        elif isinstance(msg, WorkerFinished) and msg.error is not None:
            self._event(f"worker {msg.rank} FAILED: {msg.error}")
        elif isinstance(msg, WorkerActivity):  # --compile: the first call's time goes to compiling
            self._event(f"worker {msg.rank} {msg.text}…")

    def on_end(self, result: Any) -> None:
        if self._live and self._drawn:
            self._draw(force=True)
            self._write("\n")
        if self._summary:
            self._write(f"{self._prefix}nbdist: {result.summary()}\n")

    def _event(self, text: str) -> None:
        """Something worth a line in a log; on a tty only the live line changes (failures excepted)."""
        if not self._live:
            self._write(f"{self._prefix}{text}\n")
            return
        if "FAILED" in text:
            self._write(f"\r\x1b[K{self._prefix}{text}\n")
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self._live:
            return
        now = self._clock()
        if not force and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        total = self._total or 0
        finished = self._done + self._failed
        filled = _BAR * finished // total if total else 0
        bar = "#" * filled + "-" * (_BAR - filled)
        extra = f", {self._failed} failed" if self._failed else ""
        step = f"  {self._step}" if self._step else ""
        elapsed = f"{now - self._started:.1f} s{self._rate(now)}"
        line = f"{self._prefix}[{bar}] {finished}/{total} images{extra}  {elapsed}{step}"
        self._write(f"\r\x1b[K{line}")
        self._drawn = True

    def _rate(self, now: float) -> str:
        """``  0.9 img/s, ETA 12 s``: images per second since denoising began (model loading excluded).

        Counting from the first step rather than the first image keeps a batch's images, which arrive
        together, from reading as thousands of images per second.
        """
        since, total = self._denoising_since, self._total or 0
        if since is None or self._done < 1 or now <= since:
            return ""
        rate = self._done / (now - since)
        left = max(0, total - self._done - self._failed)
        return f"  {rate:.2f} img/s, ETA {left / rate:.0f} s"

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed terminal must not stop the run
            pass
