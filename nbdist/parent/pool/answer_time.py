"""How long a cancelled run's workers may take to answer before they are killed, from what they were doing.

A worker sees a cancel after its current denoising step; one in the VAE decode sees it only when the
decode returns. A fixed grace (2 s) is shorter than one SDXL step plus its float32 decode on a T4, so
a Stop would kill warm workers there, and the next cell would fork and copy every weight again. So
the grace follows the run: each worker's step time (from its progress messages) and decode time
(from its last step to its image) are measured as the run goes, and a worker is given what its
current step or decode should take, twice over, plus a second. What was never measured gets a
generous bound: killing a worker is the expensive mistake, waiting a little longer is not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ...messages import ImageFailed, ImageReady, Message, StepProgress

__all__ = ["AnswerTimes"]

UNKNOWN_STEP = 10.0  # seconds allowed for a step never measured (a first step on a slow GPU)
UNKNOWN_DECODE = 30.0  # seconds allowed for a decode never measured (SDXL at 1024² in float32 on a T4: ~5 s)
MARGIN = 1.0


@dataclass
class _Worker:
    last_at: float  # when it last reported anything
    step: int = 0
    decoding_since: float | None = None  # its last step is done: it is in the VAE decode


class AnswerTimes:
    """Per-worker activity and measured step/decode times of one run; ``deadline`` after a cancel."""

    def __init__(self, started_at: float | None = None) -> None:
        self._workers: dict[int, _Worker] = {}
        self._started_at = started_at if started_at is not None else time.monotonic()
        self.step_seconds: float | None = None  # longest measured
        self.decode_seconds: float | None = None  # longest measured

    def _worker(self, rank: int) -> _Worker:
        return self._workers.setdefault(rank, _Worker(self._started_at))

    def on_message(self, msg: Message, now: float | None = None) -> None:
        """Learn from a message of this run's workers."""
        now = time.monotonic() if now is None else now
        rank = getattr(msg, "rank", None)
        if rank is None:
            return
        worker = self._worker(rank)
        if isinstance(msg, StepProgress):
            if msg.step > worker.step and worker.decoding_since is None and worker.step > 0:
                per_step = (now - worker.last_at) / (msg.step - worker.step)
                self.step_seconds = max(self.step_seconds or 0.0, per_step)
            worker.step = msg.step
            worker.decoding_since = now if msg.step >= msg.total else None
        elif isinstance(msg, ImageReady | ImageFailed):
            if worker.decoding_since is not None:
                self.decode_seconds = max(self.decode_seconds or 0.0, now - worker.decoding_since)
            worker.step, worker.decoding_since = 0, None
        worker.last_at = now

    def deadline(self, cancelled_at: float, grace: float, busy: set[int]) -> float:
        """When the workers in ``busy`` (those that have not answered) should have answered a cancel."""
        latest = cancelled_at + grace
        step = self.step_seconds if self.step_seconds is not None else UNKNOWN_STEP
        decode = self.decode_seconds if self.decode_seconds is not None else UNKNOWN_DECODE
        for rank in busy:
            worker = self._workers.get(rank)
            if worker is None:  # not heard from in this run: loading, or in its first step
                latest = max(latest, cancelled_at + 2 * step + MARGIN)
            elif worker.decoding_since is not None:
                latest = max(latest, worker.decoding_since + 2 * decode + MARGIN)
            else:  # in a step: the cancel is read when it ends (a step-end check precedes every decode)
                latest = max(latest, worker.last_at + 2 * step + MARGIN)
        return latest
