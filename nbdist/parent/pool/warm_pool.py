"""The warm pool: workers that stay up across cells and take runs one after another.

The first run starts the workers (a ``WorkerBackend``: forked by ``notebook_launcher``, or Ray actors
with ``--cluster``); they place the pipeline on
their device once and then serve runs from their inboxes. Later runs with the same ``PoolKey`` (model,
pipeline object, dtype, device, ``-n``) reuse them: no fork, no placement, no rendezvous. A run with
another key, or a ``--pipe`` object changed since the fork (``fingerprint.py``), gets a new group.

One thread per kernel (``nbdist-pool``) does all the pool's work: it dispatches queued runs, reads the
workers' queue, feeds the current run's observers, notices dead workers and idle time, and tells the
workers of a cancel. Callers only queue runs, mark them cancelled and wait on them, so nothing here
races, and a backend call never runs (nor fails, nor blocks) in the notebook's thread. An exception in
that thread ends the current run with one line naming the step (``failures.py``) and drops the
workers; the thread goes on, so the next run starts a new group.

Cancel (the stop button, ``RunHandle.cancel``): the group's shared cancel counter is raised; every
worker sees it after its current denoising step (or when its VAE decode returns), drops the image it
was making and reports the run finished, and stays warm. A worker that has not answered by the time
its current step or decode should have taken (measured during the run, ``answer_time.py``; at least
``STOP_GRACE``) is killed with its group (torch elastic cannot replace one member), and the next run
starts a new group. Whatever the workers do, the run ends: a launcher that outlives its killed workers
is abandoned (``_abandon``).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ...messages import Message, RunCommand, RunFinished, RunStarted, WorkerFinished, WorkerStarted
from ..planning.fingerprint import fingerprint, what_changed
from ..planning.plan import Plan, PoolKey, dispatch_order
from .backend import WorkerBackend, start_backend
from .failures import IDLE, failure
from .run import Run, RunHandle

__all__ = ["STOP_GRACE", "PoolStatus", "WorkerPool", "idle_timeout_default"]

STOP_GRACE = 2.0  # seconds a cancelled run's workers get to answer before they are killed


def idle_timeout_default() -> float | None:
    """Seconds of idleness after which the workers stop (``NBDIST_IDLE_TIMEOUT``; 0 or "off": never)."""
    raw = os.environ.get("NBDIST_IDLE_TIMEOUT", "600")
    if raw.strip().lower() in ("0", "off", "none", ""):
        return None
    return float(raw)


@dataclass(frozen=True)
class PoolStatus:
    """What the warm workers are: model, devices, pids, idle time (``nbdist.status()``)."""

    model: str | None
    devices: list[str]
    pids: list[int]
    dtype: str | None
    idle_seconds: float | None
    idle_timeout: float | None
    runs_done: int
    queued: int
    running: bool

    def __repr__(self) -> str:
        if not self.pids:
            return "<nbdist: no warm workers>"
        idle = "running a run" if self.running else f"idle {self.idle_seconds or 0:.0f} s"
        stop = f", stop after {self.idle_timeout:.0f} s idle" if self.idle_timeout else ", no idle timeout"
        queued = f", {self.queued} queued" if self.queued else ""
        devices = ", ".join(self.devices)
        pids = ", ".join(map(str, self.pids))
        return (
            f"<nbdist: {len(self.pids)} warm worker(s) for {self.model} ({self.dtype}) on {devices}; "
            f"pids {pids}; {idle}{stop}; {self.runs_done} run(s) done{queued}>"
        )


class WorkerPool:
    """Queue of runs and the group of workers that makes them (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: collections.deque[Run] = collections.deque()
        self._current: Run | None = None
        self._group: WorkerBackend | None = None
        self._group_key: PoolKey | None = None
        self._group_print: dict[str, Any] = {}
        self._group_pipe = 0  # id() of the pipeline object the workers copied
        self._last_key: PoolKey | None = None  # the key of the last run submitted (what the pool will hold)
        self._next_id = 0
        self._runs_done = 0
        self._last_activity = time.monotonic()
        self._closing = False
        self._stage = IDLE  # what the pool thread is asking the workers to do: named if it fails
        self._wake = threading.Event()
        self.idle_timeout = idle_timeout_default()
        self._thread = threading.Thread(target=self._loop, name="nbdist-pool", daemon=True)
        self._thread.start()

    # -- callers' side ----------------------------------------------------------------------------

    def submit(self, plan: Plan, observers: list[Any]) -> tuple[RunHandle, str | None]:
        """Queue a run; returns its handle and, when new workers will be needed, one line saying why."""
        reason = self._replacement_reason(plan)
        with self._lock:
            self._next_id += 1
            run = Run(self._next_id, plan, observers)
            run.fresh_group = reason is not None
            self._last_key = plan.key
        run.announce()
        with self._lock:
            ahead = len(self._pending) + (self._current is not None)
            self._pending.append(run)
        if ahead:
            run.queued(ahead)
        self._wake.set()
        return RunHandle(run, self), reason

    def _replacement_reason(self, plan: Plan) -> str | None:
        """Why this run cannot use the workers there are (or will be), or None."""
        previous = self._last_key
        if previous is None:
            return None
        if plan.key != previous:
            return f"nbdist: new workers for {plan.name} ({plan.key.difference(previous)} changed)"
        reloaded = plan.by_name and id(plan.pipe) != self._group_pipe  # the same files again: what the workers hold
        if plan.pipe is not None and not reloaded and self._group_key == plan.key and self._group is not None:
            changed = what_changed(self._group_print, fingerprint(plan.pipe))
            if changed:
                return f"nbdist: {plan.name} changed since its workers started ({', '.join(changed)}); new workers"
        return None

    def cancel(self, run: Run) -> None:
        """Cancel a queued or running run (idempotent). Only marks it: the pool thread tells the workers,
        so a backend that fails or blocks never does so in the caller's (the notebook's) thread."""
        with self._lock:
            if run.cancel_requested_at is None:
                run.cancel_requested_at = time.monotonic()
        self._wake.set()

    def shutdown(self, wait: bool = True) -> None:
        """Cancel what is queued or running, stop the workers and the pool thread."""
        with self._lock:
            self._closing = True
            for run in [*self._pending, *([self._current] if self._current else [])]:
                if run.cancel_requested_at is None:
                    run.cancel_requested_at = time.monotonic()
        self._wake.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(30)

    @property
    def closed(self) -> bool:
        return not self._thread.is_alive()

    def status(self) -> PoolStatus:
        group, key = self._group, self._group_key
        ready = dict(group.ready) if group is not None else {}
        return PoolStatus(
            model=key.model if key and ready else None,
            devices=[ready[r].device for r in sorted(ready)],
            pids=[ready[r].pid for r in sorted(ready)],
            dtype=key.dtype if key and ready else None,
            idle_seconds=None if self._current else time.monotonic() - self._last_activity,
            idle_timeout=self.idle_timeout,
            runs_done=self._runs_done,
            queued=len(self._pending),
            running=self._current is not None,
        )

    # -- the pool thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._closing and self._current is None and not self._pending:
                    break
            try:
                self._step()
            except Exception as exc:  # never end the thread: it alone ends runs, a dead one hangs every cell
                self._fail(exc)
        with contextlib.suppress(Exception):
            self._stop_group()

    def _step(self) -> None:
        self._stage = IDLE
        self._watch()
        self._send_cancel()
        self._dispatch_next()
        msg = self._next_message()
        self._stage = IDLE
        if msg is not None:
            self._route(msg)
        if self._current is not None:
            self._show_waiting()
            self._current.fanout.tick()

    def _show_waiting(self) -> None:
        """A busy cluster's "waiting for 3 CPUs, 1 free" in the run's header, each time it changes."""
        run, group = self._current, self._group
        text = group.waiting() if group is not None and run is not None else None
        if run is not None and text is not None and text != run.waiting_said:
            run.waiting_said = text
            run.fanout.phase(text)

    def _next_message(self) -> Message | None:
        group = self._group
        if group is None or self._current is None:  # idle: only a submit (or a death, seen by _watch) matters
            self._wake.wait(0.25)
            self._wake.clear()
            return None
        self._stage = "reading the workers' messages"
        return group.receive(0.05)

    def _send_cancel(self) -> None:
        """Tell the workers of a cancel the caller asked for (``cancel`` only marks the run)."""
        run, group = self._current, self._group
        if run is None or group is None or run.cancel_requested_at is None or run.cancel_sent:
            return
        run.cancel_sent = True
        self._stage = "cancelling the run"
        group.cancel(run.id)

    def _fail(self, exc: Exception) -> None:
        """Something in the pool's work raised: end the run with that line and drop the workers.

        The run ends first (the cell must not wait on workers being killed); the next run starts a
        new group. If even ending the run fails, its waiters are woken with what it has.
        """
        said = failure(self._stage, exc)
        group, run = self._group, self._current
        self._group = self._group_key = None
        if run is not None:
            try:
                self._end_current(failure=said)
            except Exception:
                with contextlib.suppress(Exception):
                    run.result = run.snapshot()
                with self._lock:
                    self._current = None
                run.done.set()
        else:
            print(f"nbdist: {said.error}; the workers were stopped", file=sys.stderr)
            self._wake.wait(0.25)  # a failure that repeats while idle must not spin the thread
        if group is not None:
            with contextlib.suppress(Exception):
                group.kill()
            with contextlib.suppress(Exception):
                group.close()

    def _dispatch_next(self) -> None:
        """Send the next queued run to the workers (starting or replacing them if needed)."""
        with self._lock:
            if self._current is not None or not self._pending:
                return
            run = self._pending.popleft()
            self._current = run
        if run.cancel_requested_at is not None:  # cancelled while it waited: nothing was made
            self._end_current()
            return
        key = run.plan.key
        if self._group is not None and not self._group.healthy():
            self._retire_group()  # a worker died since the last run: start a full group
        if self._group is not None and (self._group_key != key or run.fresh_group):
            run.notes += self._stop_group()
        if self._group is None:
            self._stage = "starting the workers"
            self._start_group(run.plan)
        assert self._group is not None
        run.begin(self._group.ready, self._group.ranks, self._group.log_dir)
        self._stage = "handing the run to the workers"
        self._group.run(
            RunCommand(
                run.id,
                tuple(dispatch_order(run.plan)),
                run.plan.options,
                run.plan.call,
                run.save_target(self._group.shares_disk),
            )
        )

    def _start_group(self, plan: Plan) -> None:
        self._group_print = fingerprint(plan.pipe) if plan.pipe is not None else {}
        self._group_pipe = id(plan.pipe)
        self._group, self._group_key = start_backend(plan), plan.key

    def _route(self, msg: Message) -> None:
        group, run = self._group, self._current
        if isinstance(msg, WorkerStarted):
            if group is not None:
                group.hello(msg)
            return
        if isinstance(msg, WorkerFinished):
            if msg.error is not None and run is not None:  # a worker could not get ready: the group is broken
                run.on_message(msg)
                if group is not None:
                    group.kill()
            return
        if run is None or (isinstance(msg, RunStarted | RunFinished) and msg.run != run.id):
            return  # a straggler of a run already ended
        run.on_message(msg)
        if run.complete:
            self._end_current()

    def _watch(self) -> None:
        """Dead workers, a cancel not answered in time, idle workers."""
        group, run = self._group, self._current
        if group is not None and not group.alive:
            self._drain(group)
            died, error = group.deaths(), group.launcher_error()
            group.close()
            self._group = self._group_key = None
            if self._current is not None:
                note = "the workers were stopped" if not died and error is None else None
                self._end_current(died=died, error=error, note=note)
            return
        now = time.monotonic()
        if run is not None and run.cancel_requested_at is not None and group is not None:
            if now > run.answer_deadline(STOP_GRACE):
                self._stage = "killing workers that did not answer the cancel"
                group.kill()  # the next _watch finds it dead and ends the run
                if group.alive:
                    self._abandon(group)
            return
        if run is None and group is not None and group.all_ready and not group.healthy():
            self._retire_group()  # killed while idle: no stale pids in the status, the next run starts afresh
            return
        idle = self.idle_timeout
        if run is None and group is not None and idle is not None and now - self._last_activity > idle:
            with self._lock:
                if not self._pending:
                    self._stop_group()

    def _abandon(self, group: WorkerBackend) -> None:
        """The workers were killed but the launcher did not return: end the run anyway, never hang the cell.

        torch elastic waits for each worker's return value; a worker that exits without one (a status 0
        with no value) would keep it polling forever. Its thread is a daemon and is left to itself.
        """
        self._drain(group)
        group.close()
        self._group = self._group_key = None
        self._end_current(note="the workers were stopped")

    def _drain(self, group: WorkerBackend) -> None:
        """Messages the workers sent before they went: the images they finished are kept."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            msg = group.receive(0.05)
            if msg is None:
                return
            self._route(msg)

    def _end_current(self, **why: Any) -> None:
        run = self._current
        if run is None:
            return
        run.finish(**why)
        with self._lock:
            self._current = None
            self._runs_done += 1
        self._last_activity = time.monotonic()

    def _retire_group(self) -> None:
        """A group with a dead worker: kill the rest now rather than wait for torch elastic to."""
        self._drop_group(kill=True)

    def _stop_group(self) -> list[str]:
        """Ask a healthy group to stop (escalating to kill if it does not); a line if stopping failed."""
        return self._drop_group(kill=False)

    def _drop_group(self, kill: bool) -> list[str]:
        """Stop or kill the group; a stop that raises is followed by a kill, and said in one line."""
        group = self._group
        self._group = self._group_key = None
        if group is None:
            return []
        lines: list[str] = []
        if not kill:
            try:
                group.stop()
                return []
            except Exception as exc:
                lines.append(f"{failure('stopping the previous workers', exc).error}; they were killed")
        with contextlib.suppress(Exception):
            group.kill()
        with contextlib.suppress(Exception):
            group.close()
        return lines


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def the_pool() -> WorkerPool:
    """This process's pool (created on first use, after a shutdown again)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.closed:
            _POOL = WorkerPool()
            _stop_at_exit()
        return _POOL


def _stop_at_exit() -> None:
    """Stop the workers at interpreter exit, before multiprocessing's own exit hook.

    That hook joins every non-daemon child, and the workers (forked by torch elastic) are such
    children waiting for their next run: joined first, they would hang the exit forever. atexit runs
    the last registered first, so nbdist registers (again) after multiprocessing is surely imported.
    """
    import multiprocessing.util  # noqa: F401 - registers its hook now if it has not yet

    atexit.unregister(shutdown_pool)
    atexit.register(shutdown_pool)


def shutdown_pool() -> bool:
    """Stop the warm workers (``nbdist.shutdown()``); True if there were any."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is None:
        return False
    had = pool.status().pids != []
    pool.shutdown()
    return had


def current_status() -> PoolStatus:
    with _POOL_LOCK:
        pool = _POOL
    if pool is None:
        return PoolStatus(None, [], [], None, None, idle_timeout_default(), 0, 0, False)
    return pool.status()
