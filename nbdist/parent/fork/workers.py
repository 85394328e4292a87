"""One launch of warm workers: forked together by ``notebook_launcher``, stopped together.

torch elastic runs a fixed-size group (one gloo/NCCL process group): when one member dies it stops
the others, and a member cannot be replaced alone. So the unit the pool starts, watches and replaces
is the whole group. The group owns what lives exactly as long as its workers: the launcher thread,
the loopback rendezvous store, the queues and shared counters, and the workers' log folder.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import queue as queue_module
import shutil
import tempfile
import time
from typing import Any

from ...messages import Command, Message, RunCommand, WorkerStarted
from ...options import GenerateOptions
from ...spec import PoolSpec
from ..pool.exits import WorkerExit
from .launch import (
    deaths,
    kill_workers,
    loopback_store,
    muted_stdout,
    start_launcher,
    stop_workers,
    workers_since,
)

__all__ = ["SURVIVOR_GRACE", "WorkerGroup"]

# Seconds the other workers get, once one has died, to send what they finished before they are killed.
SURVIVOR_GRACE = 0.5


class WorkerGroup:
    """``n`` forked workers serving runs from their inboxes until ``stop``."""

    shares_disk = True  # forked on this machine: they write each PNG into the run folder themselves

    def __init__(
        self,
        pipe: Any,
        model: str,
        device_type: str,
        dtype: str,
        num_processes: int,
        threads: int,
        options: GenerateOptions,
        cuda_visible: str | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self.num_processes = num_processes
        self.spec = PoolSpec(
            device_type=device_type,
            dtype=dtype,
            threads_per_worker=threads,
            log_dir=tempfile.mkdtemp(prefix="nbdist-logs-"),
            queue=ctx.Queue(),
            options=options,
            pipeline=pipe,
            model=model,
            cuda_visible=cuda_visible,
            inboxes=[ctx.SimpleQueue() for _ in range(num_processes)],
            cancel=ctx.Value("q", -1, lock=False),
            next_job=ctx.Value("q", 0),
        )
        self.ready: dict[int, WorkerStarted] = {}
        self.started_at = time.monotonic()
        self._stack = contextlib.ExitStack()
        self._before: set[int] = set()
        self._processes: list[Any] = []
        self._broken_at: float | None = None  # when a worker was first seen dead while the launcher ran
        self._mute: contextlib.AbstractContextManager[None] | None = None
        self.thread: Any = None

    def start(self) -> None:
        """Fork the workers (returns at once; each says ``WorkerStarted`` when its pipeline is placed)."""
        from ...worker import serve

        self._before = {p.pid for p in multiprocessing.active_children()}
        self._environ = dict(os.environ)
        port = self._stack.enter_context(loopback_store())
        self._mute = muted_stdout()
        self._mute.__enter__()
        self._stack.callback(self._unmute)
        # Objects alive now (the pipeline's modules, every imported library) go to the GC's permanent
        # generation while the workers are forked: a full collection in a worker would otherwise write
        # to all their headers and copy-on-write ~95 MB of the kernel's heap into each worker
        # (benchmarks/RESULTS.md). The workers keep their frozen state; the kernel unfreezes once all
        # of them are up.
        gc.freeze()
        self._stack.callback(gc.unfreeze)
        self.thread = start_launcher(serve, (self.spec,), self.num_processes, port)

    def hello(self, msg: WorkerStarted) -> None:
        """A worker is ready; once all are, the kernel stops muting and unfreezes its GC."""
        self.ready[msg.rank] = msg
        if self.all_ready:
            self._processes = workers_since(self._before)
            gc.unfreeze()
            self._unmute()
            _restore_environ(self._environ)

    @property
    def all_ready(self) -> bool:
        return len(self.ready) == self.num_processes

    @property
    def alive(self) -> bool:
        """The launcher still runs, i.e. no worker has died and the group was not stopped."""
        return self.thread is not None and self.thread.is_alive()

    def healthy(self) -> bool:
        """The launcher runs and every worker is alive: a worker killed while idle shows here first.

        torch elastic notices a dead worker within its monitor interval, then takes its time stopping
        the others; a run must not be handed to a group in that state.
        """
        return self.alive and all(proc.is_alive() for proc in self._processes)

    def waiting(self) -> str | None:
        return None  # forks start at once

    @property
    def pids(self) -> list[int]:
        return [self.ready[r].pid for r in sorted(self.ready)]

    @property
    def ranks(self) -> set[int]:
        return set(range(self.num_processes))

    @property
    def log_dir(self) -> str:
        return self.spec.log_dir

    def run(self, command: RunCommand) -> None:
        """Every worker gets the whole run and takes its share (static) or pulls from the shared counter (dynamic)."""
        self.reset_pull()
        self.send(command)

    def receive(self, timeout: float) -> Message | None:
        """The next message on the workers' queue; None when there is none yet or the queue's pipe broke."""
        self._end_if_broken()
        try:
            return self.spec.queue.get(timeout=timeout)  # type: ignore[no-any-return]
        except queue_module.Empty:
            return None
        except (EOFError, OSError, ValueError):  # the queue's pipe broke: the group is going
            return None

    def _end_if_broken(self) -> None:
        """A worker died: give the others ``SURVIVOR_GRACE`` s to send what they made, then SIGKILL them.

        torch elastic stops the others itself (SIGTERM, then SIGKILL 30 s later), and they exit at once,
        unless the dead worker was killed while writing to the shared message queue: it then died holding
        the queue's write lock, and a survivor's exit waits on that lock until elastic's SIGKILL, a cell
        stuck for 30 s with nothing more to show. The group cannot go on anyway (one member cannot be
        replaced), so it ends as soon as the others have had their chance to flush.
        """
        if not self._processes or not self.alive:
            return
        now = time.monotonic()
        if self._broken_at is None:
            if not all(proc.is_alive() for proc in self._processes):
                self._broken_at = now
            return
        if now - self._broken_at >= SURVIVOR_GRACE:
            kill_workers([proc for proc in self._processes if proc.is_alive()])

    def send(self, command: Command) -> None:
        """The same command to every worker's inbox."""
        for inbox in self.spec.inboxes:
            inbox.put(command)

    def cancel(self, run: int) -> None:
        """Cancel run ``run`` (and any before it): workers see it after their current denoising step."""
        self.spec.cancel.value = max(self.spec.cancel.value, run)

    def reset_pull(self) -> None:
        """Start the dynamic schedule's shared job counter at 0 (between runs only)."""
        self.spec.next_job.value = 0

    def deaths(self) -> list[WorkerExit]:
        """Workers that died (read once the launcher has returned)."""
        raised = getattr(self.thread, "raised", None)
        return (deaths(raised) or []) if raised is not None else []

    def launcher_error(self) -> BaseException | None:
        """A launcher failure that is not a worker's death (e.g. the rendezvous failed)."""
        raised = getattr(self.thread, "raised", None)
        return raised if raised is not None and deaths(raised) is None else None

    def stop(self, grace: float = 5.0) -> list[int]:
        """Ask every worker to exit; signal those still there after ``grace`` s. Returns pids that survived."""
        leftover: list[int] = []
        if self.alive:
            with contextlib.suppress(Exception):
                self.send(None)
            self.thread.join(grace)
        if self.alive:
            leftover = self.kill()
        self.close()
        return leftover

    def kill(self) -> list[int]:
        """SIGINT, SIGTERM, SIGKILL (``STOP_SCHEDULE``) to every worker; waits for the launcher to return."""
        if self.thread is None:  # never launched: nothing forked (and every child since ``_before`` is not ours)
            return []
        procs = self._processes or workers_since(self._before)
        leftover = stop_workers(procs)
        if self.thread is not None:
            deadline = time.monotonic() + 5.0
            while self.thread.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(KeyboardInterrupt):
                    self.thread.join(0.1)
                    late = [p for p in workers_since(self._before) if p.is_alive()]
                    if late:  # forked after we looked (killed before every worker was up)
                        leftover = stop_workers(late)
        return leftover

    def _unmute(self) -> None:
        """Stop dropping the launcher thread's prints (its banner came before the fork)."""
        if self._mute is not None:
            mute, self._mute = self._mute, None
            mute.__exit__(None, None, None)

    def close(self) -> None:
        """Release the store, the queue and the log folder (after the workers are gone)."""
        self._stack.close()
        with contextlib.suppress(Exception):
            self.spec.queue.close()
        shutil.rmtree(self.spec.log_dir, ignore_errors=True)


def _restore_environ(before: dict[str, str]) -> None:
    """Undo the launcher's environment (``MASTER_PORT``, ``WORLD_SIZE``, ...) in the kernel once the workers have it.

    ``notebook_launcher`` sets them in this process for as long as it runs, which for warm workers is
    the pool's life: an ``Accelerator()`` or a ``torchrun`` started from the notebook meanwhile would
    join a process group that is not theirs. The workers copied them at fork; the kernel drops them.
    """
    for key in [k for k in os.environ if k not in before]:
        os.environ.pop(key, None)
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
