"""Where worker messages become results and display updates.

``ResultBuilder`` turns messages into records; ``Fanout`` hands every message to the observers in
order, from one thread only (the pool thread, or a ``Collector`` thread), so widget updates never race.
A ``Collector`` ends when every worker has said it finished, or when the launcher has returned (all
worker processes gone) and the queue is drained: a worker killed without a goodbye cannot hang it.
"""

from __future__ import annotations

import queue as queue_module
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...messages import ImageFailed, ImageReady, Message, WorkerFinished, WorkerStarted
from ..output.static_html import INLINE_CAP
from .observer import RunInfo, RunObserver
from .result import ImageRecord, WorkerFailure, WorkerInfo

__all__ = ["Collector", "Fanout", "ResultBuilder"]


class ResultBuilder:
    """Turns messages into ``ImageRecord``s (an observer like the others, first after the disk writer).

    ``paths`` is the disk writer's index -> file map, for images that arrive as bytes or pixels and are
    written in the kernel; an image the worker wrote itself names its file in the message. A record
    holds the full-size image only when it came as raw pixels (``--no-save``): otherwise its file is it.
    """

    def __init__(self, paths: dict[int, Path] | None = None) -> None:
        self._paths = paths if paths is not None else {}
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
                params=job.settings,
                node=worker.node if (worker := self.workers.get(msg.rank)) is not None else None,
            )
            if isinstance(msg, ImageReady):
                record.path = Path(msg.path) if msg.path is not None else self._paths.get(msg.index)
                if msg.pixels is not None:
                    record.image = msg.to_pil()
                record.seconds = msg.seconds
                record.thumbnail = msg.thumbnail if msg.index < INLINE_CAP else None  # the static copy's only
                record.note = msg.note
                record.skipped_steps = msg.skipped_steps
                if self.first_image_at is None:
                    self.first_image_at = time.monotonic()
            else:
                record.error, record.traceback = msg.error, msg.traceback
            self.records[msg.index] = record
        elif isinstance(msg, WorkerStarted):
            self.workers[msg.rank] = WorkerInfo(
                msg.rank, msg.device, msg.pid, msg.threads, msg.device_map, node=msg.node, bad_fork=msg.bad_fork
            )
        elif isinstance(msg, WorkerFinished):
            self.finished.add(msg.rank)
            if msg.error is not None:
                self.worker_failures.append(WorkerFailure(msg.rank, msg.error, msg.traceback))

    def on_end(self, result: Any) -> None:
        pass


class Fanout:
    """Hands each message to every observer in order; a failing observer never loses results.

    ``tick`` lets observers that coalesce updates (the gallery) flush; ``on_tick`` is optional and an
    observer decides itself how often it really sends anything.
    """

    def __init__(self, observers: Sequence[RunObserver]) -> None:
        self.observers = list(observers)
        self.errors: list[BaseException] = []

    def _call(self, obs: Any, method: str, *args: Any) -> None:
        function = getattr(obs, method, None)
        if function is None:
            return
        try:
            function(*args)
        except Exception as exc:  # a display bug must not lose results
            if not self.errors:
                print(f"nbdist: {type(obs).__name__} failed: {exc!r}", file=sys.stderr)
            self.errors.append(exc)

    def start(self, run: RunInfo) -> None:
        for obs in self.observers:
            self._call(obs, "on_start", run)

    def queued(self, ahead: int) -> None:
        """The run waits behind ``ahead`` others (observers with ``on_queued`` say so)."""
        for obs in self.observers:
            self._call(obs, "on_queued", ahead)

    def dispatch(self, msg: Message) -> None:
        for obs in self.observers:
            self._call(obs, "on_message", msg)

    def tick(self) -> None:
        for obs in self.observers:
            self._call(obs, "on_tick")

    def phase(self, text: str) -> None:
        """What the run waits on before its workers can say anything (``on_phase``, where observers have it)."""
        for obs in self.observers:
            self._call(obs, "on_phase", text)

    def end(self, result: Any) -> None:
        """``on_end`` of every observer; one that fails does not keep the result from the others."""
        for obs in self.observers:
            try:
                obs.on_end(result)
            except Exception as exc:
                print(f"nbdist: {type(obs).__name__} failed at the end of the run: {exc!r}", file=sys.stderr)


class Collector:
    """Reads one run's worker queue on a background thread and fans messages out to observers.

    Used where processes make one run and exit (the CLI under torchrun); the kernel's warm pool reads
    its queue on the pool thread instead (``parent/pool/warm_pool.py``).
    """

    def __init__(self, source: Any, observers: Sequence[RunObserver], num_workers: int) -> None:
        self._source = source
        self._fanout = Fanout(observers)
        self._num_workers = num_workers
        self._launcher_done = threading.Event()
        self._finished: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="nbdist-collector", daemon=True)

    @property
    def observer_errors(self) -> list[BaseException]:
        return self._fanout.errors

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float | None = None) -> None:
        """Called once the workers are gone: drain what is left, then stop."""
        self._launcher_done.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while len(self._finished) < self._num_workers:
            try:
                msg = self._source.get(timeout=0.05)
            except queue_module.Empty:
                if self._launcher_done.is_set():
                    return
                self._fanout.tick()
                continue
            except (EOFError, OSError):
                return
            if isinstance(msg, WorkerFinished):
                self._finished.add(msg.rank)
            self._fanout.dispatch(msg)
            self._fanout.tick()
