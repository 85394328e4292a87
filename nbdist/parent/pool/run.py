"""One run on the warm pool: its observers, its records as they arrive, and its result at the end.

A ``Run`` lives on the pool thread once dispatched; the caller holds a ``RunHandle`` that fills as
images arrive (the same record API as ``GenerationResult``), and can ``wait`` for the result or
``cancel``. Pool workers speak per run (``RunStarted`` ... ``RunFinished``); the run turns those into
the ``WorkerStarted`` / ``WorkerFinished`` every observer already understands.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...messages import Message, RunFinished, RunStarted, SaveTarget, WorkerFinished, WorkerStarted
from ..output.saving import DiskWriter
from ..planning.plan import Plan
from ..results.collector import Fanout, ResultBuilder
from ..results.observer import RunObserver
from ..results.result import GenerationResult, ImageRecord, RecordSequence, WorkerFailure
from .answer_time import AnswerTimes
from .exits import WorkerExit

__all__ = ["Run", "RunHandle"]


class Run:
    """A planned run, queued or running on the pool; finished exactly once."""

    def __init__(self, run_id: int, plan: Plan, observers: Sequence[RunObserver]) -> None:
        self.id = run_id
        self.plan = plan
        self.writer = DiskWriter(plan.options.save_dir) if plan.options.save_dir else None
        self.builder = ResultBuilder(self.writer.paths if self.writer else None)
        # the writer first: an image's manifest line is on disk before its tile shows
        self.fanout = Fanout([*([self.writer] if self.writer else []), self.builder, *observers])
        self.finished_ranks: set[int] = set()
        self.cancel_requested_at: float | None = None
        self.cancel_sent = False  # the pool thread has told the workers
        self.waiting_said: str | None = None  # what the workers wait for, last told to the observers
        self.notes: list[str] = []  # lines about the pool's own trouble on this run's way (said at its end)
        self.fresh_group = False  # the pipeline changed since the workers started: they must be replaced
        self.started_at: float | None = None
        self.waited = False  # queued behind other runs: its totals count from when the workers took it
        self.result: GenerationResult | None = None
        self.done = threading.Event()
        self._log_offsets: dict[int, int] = {}
        self._log_dir = ""
        self._hellos: dict[int, WorkerStarted] = {}
        self._ranks: set[int] = set(range(plan.num_processes))
        self.answers = AnswerTimes()  # what the workers are doing: how long a cancel may take

    def save_target(self, shared_disk: bool = True) -> SaveTarget | None:
        """Where the workers send this run's images (``messages.SaveTarget``); None: raw pixels (``--no-save``).

        ``shared_disk``: the workers see the kernel's filesystem (forked ones always do) and write the
        PNGs themselves; otherwise they send PNG bytes for the kernel to write.
        """
        if self.writer is None:
            return None
        return SaveTarget(str(self.writer.folder) if shared_disk else None, self.writer.params)

    def announce(self) -> None:
        """Observers' ``on_start``, in the caller's thread (the gallery displays itself in the cell)."""
        self.fanout.start(self.plan.info)

    def queued(self, ahead: int) -> None:
        """The run waits behind ``ahead`` others: observers say so, and the wait is not counted as its own."""
        self.waited = True
        self.fanout.queued(ahead)

    def begin(self, hellos: dict[int, WorkerStarted], ranks: set[int], log_dir: str) -> None:
        """The pool dispatched the run to the workers ``ranks`` (``hellos`` fills as they get ready)."""
        self.started_at = time.monotonic()
        self.answers = AnswerTimes(self.started_at)
        self._hellos = hellos
        self._ranks = set(ranks)
        self._log_dir = log_dir
        self._log_offsets = {rank: _size(self._log_path(rank)) for rank in self._ranks}

    def on_message(self, msg: Message) -> None:
        """A message from the workers while this run is theirs."""
        self.answers.on_message(msg)
        if isinstance(msg, RunStarted):
            hello = self._hellos[msg.rank]
            msg = replace(hello, num_jobs=msg.num_jobs)
        elif isinstance(msg, RunFinished):
            self.finished_ranks.add(msg.rank)
            msg = WorkerFinished(msg.rank, msg.error, msg.traceback)
        self.fanout.dispatch(msg)

    def answer_deadline(self, grace: float) -> float:
        """When a cancelled run's workers that have not answered should have (``answer_time.py``)."""
        busy = self._ranks - self.finished_ranks
        return self.answers.deadline(self.cancel_requested_at or time.monotonic(), grace, busy)

    @property
    def complete(self) -> bool:
        """Every worker the run was handed to has said it is done with it (a cluster may have lost some before)."""
        return self.finished_ranks >= self._ranks

    def finish(
        self,
        *,
        died: Sequence[WorkerExit] = (),
        error: BaseException | None = None,
        note: str | None = None,
        failure: WorkerFailure | None = None,
    ) -> GenerationResult:
        """Build the result (partial if cancelled or workers died), tell the observers, wake the waiters.

        ``failure``: the pool itself failed (``warm_pool.py``), said in one line with its traceback.
        """
        builder = self.builder
        for exit_ in died:
            if not any(f.rank == exit_.rank for f in builder.worker_failures):
                builder.worker_failures.append(
                    WorkerFailure(exit_.rank, f"worker process {exit_.pid} {exit_.describe()}")
                )
        if error is not None:
            builder.worker_failures.append(WorkerFailure(-1, f"launcher: {type(error).__name__}: {error}"))
        if note:
            builder.worker_failures.append(WorkerFailure(-1, note))
        builder.worker_failures += [WorkerFailure(-1, line) for line in self.notes]
        if failure is not None:
            builder.worker_failures.append(failure)
        result = self._result(builder.worker_failures)
        self.fanout.end(result)
        self.result = result
        self.done.set()
        return result

    def snapshot(self) -> GenerationResult:
        """The images finished so far, as an interrupted result, while the run itself goes on ending.

        For a caller that stops waiting (a Ctrl-C not answered within a second); the observers (the
        gallery, ``-o``) still get the full result when the pool ends the run.
        """
        return self._result(list(self.builder.worker_failures), interrupted=True)

    def _result(self, failures: list[WorkerFailure], interrupted: bool = False) -> GenerationResult:
        plan, builder = self.plan, self.builder
        records = dict(builder.records)  # a C-level copy: safe while the pool thread adds
        started = self.counted_from()
        result = GenerationResult(
            records=[records[i] for i in sorted(records)],
            missing=[job for job in plan.jobs if job.index not in records],
            options=plan.options,
            seed=plan.info.seed,
            model=plan.name,
            num_processes=plan.num_processes,
            seconds=0.0 if started is None else time.monotonic() - started,
            first_image_seconds=None
            if builder.first_image_at is None or started is None
            else builder.first_image_at - started,
            interrupted=interrupted or self.cancel_requested_at is not None,
            worker_failures=failures,
            workers=dict(builder.workers),
            logs=self._read_logs(),
            save_dir=Path(plan.options.save_dir) if plan.options.save_dir else None,
            settings=dict(plan.call.effective),
            jobs=list(plan.jobs),
            sources=dict(plan.call.sources),
        )
        if self.writer is not None:
            for record in result.records:
                record.path = self.writer.paths.get(record.index)
        return result

    def counted_from(self) -> float | None:
        """Where the run's seconds start: the ``generate`` call (imports and the kernel's load are part of
        the wait), or for a run that was queued behind others, when the workers took it; None if they never did.
        """
        if self.started_at is None:
            return None
        called = self.plan.info.started
        return called if called is not None and not self.waited else self.started_at

    def _read_logs(self) -> dict[int, str]:
        """What each worker wrote to its log during this run."""
        logs: dict[int, str] = {}
        for rank, offset in self._log_offsets.items():
            try:
                with self._log_path(rank).open("rb") as f:
                    f.seek(offset)
                    logs[rank] = f.read().decode("utf-8", errors="replace")
            except OSError:
                continue
        return logs

    def _log_path(self, rank: int) -> Path:
        return Path(self._log_dir) / f"worker-{rank}.log"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class RunHandle(RecordSequence):
    """A run going on in the background: records so far, ``done``, ``wait()`` and ``cancel()``.

    Indexing and iterating give the images finished so far in prompt order, like ``GenerationResult``;
    ``wait`` returns the ``GenerationResult`` once the run is over.
    """

    def __init__(self, run: Run, pool: Any) -> None:
        self._run = run
        self._pool = pool

    @property  # type: ignore[override]
    def records(self) -> list[ImageRecord]:
        if self._run.result is not None:
            return self._run.result.records
        snapshot = dict(self._run.builder.records)  # a C-level copy: safe while the pool thread adds
        return [snapshot[i] for i in sorted(snapshot)]

    @property
    def done(self) -> bool:
        return self._run.done.is_set()

    @property
    def result(self) -> GenerationResult | None:
        """The ``GenerationResult`` once the run is over, else None."""
        return self._run.result

    def wait(self, timeout: float | None = None) -> GenerationResult:
        """Block until the run is over and return its result (``TimeoutError`` after ``timeout`` s)."""
        if not self._run.done.wait(timeout):
            raise TimeoutError(f"run {self._run.id} is still going after {timeout} s")
        assert self._run.result is not None
        return self._run.result

    def wait_briefly(self, seconds: float = 0.1) -> bool:
        """Wait at most ``seconds``; True when the run is over (lets the caller take interrupts)."""
        return self._run.done.wait(seconds)

    def cancel(self) -> None:
        """Stop the run: images being made are dropped within one denoising step, finished ones kept."""
        self._pool.cancel(self._run)

    @property
    def pool_alive(self) -> bool:
        """The pool's thread still runs (it alone ends runs): a waiter need not wait on a dead one."""
        return not self._pool.closed

    def snapshot(self) -> GenerationResult:
        """The result now, or the images so far if the run is still ending (``Run.snapshot``)."""
        return self._run.result if self._run.result is not None else self._run.snapshot()

    def __repr__(self) -> str:
        if self._run.result is not None:
            return f"<RunHandle done: {self._run.result.summary()}>"
        total = len(self._run.plan.jobs)
        state = "running" if self._run.started_at is not None else "queued"
        return f"<RunHandle {state}: {len(self)} of {total} images so far>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
