"""The collector thread: the one place where worker messages become results and display updates.

Every observer is called from this thread only, in message order, so widget updates never race.
The thread ends when every worker has said it finished, or when the launcher has returned (all worker
processes gone) and the queue is drained: a worker killed without a goodbye cannot hang it.
"""

from __future__ import annotations

import queue as queue_module
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..messages import ImageFailed, ImageReady, Message, WorkerFinished, WorkerStarted
from .observer import RunInfo, RunObserver
from .results import ImageRecord, WorkerFailure, WorkerInfo

__all__ = ["Collector", "ResultBuilder"]


class ResultBuilder:
    """Turns messages into ``ImageRecord``s (an observer like the others, always first)."""

    def __init__(self) -> None:
        self.records: dict[int, ImageRecord] = {}
        self.finished: set[int] = set()
        self.worker_failures: list[WorkerFailure] = []
        self.workers: dict[int, WorkerInfo] = {}
        self.first_image_at: float | None = None
        self._jobs: dict[int, Any] = {}

    def on_start(self, run: RunInfo) -> None:
        self._jobs = {job.index: job for job in run.jobs}

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, ImageReady | ImageFailed):
            job = self._jobs[msg.index]
            record = ImageRecord(
                index=job.index,
                prompt=job.prompt,
                prompt_index=job.prompt_index,
                seed=job.seed,
                rank=msg.rank,
                device=msg.device,
            )
            if isinstance(msg, ImageReady):
                record.image = msg.to_pil()
                record.seconds = msg.seconds
                record.thumbnail = msg.thumbnail
                if self.first_image_at is None:
                    self.first_image_at = time.monotonic()
            else:
                record.error, record.traceback = msg.error, msg.traceback
            self.records[msg.index] = record
        elif isinstance(msg, WorkerStarted):
            self.workers[msg.rank] = WorkerInfo(msg.rank, msg.device, msg.pid, msg.threads, msg.device_map)
        elif isinstance(msg, WorkerFinished):
            self.finished.add(msg.rank)
            if msg.error is not None:
                self.worker_failures.append(WorkerFailure(msg.rank, msg.error, msg.traceback))

    def on_end(self, result: Any) -> None:
        pass


class Collector:
    """Reads the worker queue on a background thread and fans messages out to observers."""

    def __init__(self, source: Any, observers: Sequence[RunObserver], num_workers: int) -> None:
        self._source = source
        self._observers = list(observers)
        self._num_workers = num_workers
        self._launcher_done = threading.Event()
        self._finished: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="nbdist-collector", daemon=True)
        self.observer_errors: list[BaseException] = []

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float | None = None) -> None:
        """Called once the workers are gone: drain what is left, then stop."""
        self._launcher_done.set()
        self._thread.join(timeout)

    def _dispatch(self, msg: Message) -> None:
        for obs in self._observers:
            try:
                obs.on_message(msg)
            except Exception as exc:  # a display bug must not lose results
                if not self.observer_errors:
                    print(f"nbdist: {type(obs).__name__} failed: {exc!r}", file=sys.stderr)
                self.observer_errors.append(exc)

    def _tick(self) -> None:
        """Let observers that coalesce updates (the gallery) flush: after every message and every 50 ms idle.

        ``on_tick`` is optional; an observer decides itself how often it really sends anything.
        """
        for obs in self._observers:
            on_tick = getattr(obs, "on_tick", None)
            if on_tick is None:
                continue
            try:
                on_tick()
            except Exception as exc:  # a display bug must not lose results
                if not self.observer_errors:
                    print(f"nbdist: {type(obs).__name__} failed: {exc!r}", file=sys.stderr)
                self.observer_errors.append(exc)

    def _run(self) -> None:
        while len(self._finished) < self._num_workers:
            try:
                msg = self._source.get(timeout=0.05)
            except queue_module.Empty:
                if self._launcher_done.is_set():
                    return
                self._tick()
                continue
            except (EOFError, OSError):
                return
            if isinstance(msg, WorkerFinished):
                self._finished.add(msg.rank)
            self._dispatch(msg)
            self._tick()
