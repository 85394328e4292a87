"""Start the workers with ``accelerate.notebook_launcher`` (fork), stop them on an interrupt, report deaths.

Why not call the launcher plainly from the kernel's main thread:

- accelerate's fixed port 29500 collides with a previous failed run ("address already in use") and
  with a second kernel; and the rendezvous store torch creates listens on every interface (``::``).
  nbdist binds its own socket on 127.0.0.1 (port chosen by the OS, held from bind to the end of the
  run, so no race) and hands it to a multi-tenant ``TCPStore`` that torch's static rendezvous reuses.
- torch elastic, called from the main thread, replaces the kernel's SIGINT handler with one that
  raises ``SignalException`` and never puts the old one back; it then stops workers with a 30 s grace
  period. nbdist runs the launcher on a helper thread instead (elastic then leaves signals alone), so
  the notebook's stop button raises ``KeyboardInterrupt`` in the waiting main thread, and nbdist
  stops the workers itself: SIGINT, then SIGTERM, then SIGKILL, within ``STOP_SCHEDULE`` seconds.
- with ``max_restarts=0`` a worker that dies makes elastic stop the others and raise
  ``ChildFailedError`` with pages of traceback; nbdist turns that into ``WorkerExit`` records.
- its banner ("Launching training on 2 CUDAs.") is printed even on a CPU run; and with
  ``num_processes=1`` it runs the function inside the kernel itself, so for one process nbdist calls
  the same torch elastic launch that ``notebook_launcher`` uses for many.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..worker.lifecycle import detached

__all__ = ["STOP_SCHEDULE", "LaunchOutcome", "WorkerExit", "free_port", "launch_workers"]

# Seconds to wait after each signal before sending the next: SIGINT lets a worker send the images it
# has finished; SIGTERM ends one that ignores SIGINT; SIGKILL cannot be ignored.
STOP_SCHEDULE: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 0.8),
    (signal.SIGTERM, 0.5),
    (signal.SIGKILL, 0.5),
)


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


@dataclass
class LaunchOutcome:
    """How the workers ended: all well, interrupted (and how fast they were gone), or some died."""

    interrupted: bool = False
    stop_seconds: float | None = None  # from the interrupt to the last worker gone
    died: list[WorkerExit] = field(default_factory=list)
    error: BaseException | None = None  # a launcher failure that is not a worker's death
    leftover_pids: list[int] = field(default_factory=list)  # workers still alive after SIGKILL (D state)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def loopback_store() -> Iterator[int]:
    """Hold a rendezvous store listening on 127.0.0.1 only, on a port the OS picked; yields the port.

    torch's static rendezvous opens ``TCPStore(addr, port, multi_tenant=True)``; a multi-tenant store
    on a port this process already serves reuses that server, so the workers rendezvous here. The
    socket is bound before the port is known, so no other process can take it in between.
    """
    from torch.distributed import TCPStore

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = int(sock.getsockname()[1])
    except OSError:
        sock.close()
        raise
    store = TCPStore(
        "127.0.0.1",
        port,
        None,
        True,
        timedelta(seconds=60),
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=sock.detach(),  # the store owns the fd from here on
    )
    try:
        yield port
    finally:
        del store


@contextlib.contextmanager
def quiet_launch() -> Iterator[None]:
    """Swallow the launcher's banner and torch elastic's info/warning logs (errors still show)."""
    names = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _launch_one(function: Callable[..., Any], args: tuple[Any, ...], port: int) -> None:
    """One forked worker through torch elastic, as ``notebook_launcher`` does for several."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=1,
        run_id="nbdist",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_backend="static",
        rdzv_configs={"rank": 0},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="fork",
    )
    elastic_launch(config=config, entrypoint=function)(*args)


def _run_launcher(function: Callable[..., Any], args: tuple[Any, ...], n: int, port: int) -> None:
    if n == 1:
        _launch_one(function, args, port)
        return
    from accelerate import notebook_launcher

    notebook_launcher(function, args=args, num_processes=n, use_port=str(port), master_addr="127.0.0.1")


class _LauncherThread(threading.Thread):
    """Runs the blocking launcher; keeps what it raised for the main thread."""

    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__(name="nbdist-launcher", daemon=True)
        self._target_fn = target
        self.raised: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # handed to the main thread, never lost
            self.raised = exc
        finally:
            # ipykernel keeps threads started in a cell; without this the run's spec (its queue's pipe,
            # the pipeline) would live as long as the kernel. threading.Thread.run does the same.
            del self._target_fn


def _workers(before: set[int]) -> list[Any]:
    """The live multiprocessing children started since ``before`` was taken: this run's workers."""
    return [p for p in multiprocessing.active_children() if p.pid not in before]


def _signal_worker(pid: int, sig: signal.Signals) -> None:
    """Signal the worker's own process group (it leads one), else just the worker."""
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_workers(workers: list[Any]) -> list[int]:
    """SIGINT, SIGTERM, SIGKILL on ``STOP_SCHEDULE``; returns the pids still alive at the end."""
    alive = [p for p in workers if p.is_alive()]
    for sig, wait in STOP_SCHEDULE:
        if not alive:
            break
        for proc in alive:
            _signal_worker(proc.pid, sig)
        deadline = time.monotonic() + wait
        for proc in alive:
            # A second interrupt while waiting must not leave workers behind: go on to the next signal.
            with contextlib.suppress(KeyboardInterrupt):
                proc.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in alive if p.is_alive()]
    return [p.pid for p in alive]


def _deaths(exc: BaseException) -> list[WorkerExit] | None:
    """The worker deaths behind torch elastic's ``ChildFailedError``, or None for another error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not isinstance(exc, ChildFailedError):
        return None
    return [WorkerExit(f.local_rank, f.pid, f.exitcode) for f in exc.failures.values()]


def launch_workers(function: Callable[..., Any], args: tuple[Any, ...], num_processes: int) -> LaunchOutcome:
    """Run ``function(*args)`` in ``num_processes`` forked workers; return once they have all exited.

    ``KeyboardInterrupt`` while waiting stops the workers (see ``STOP_SCHEDULE``) and returns an
    outcome with ``interrupted`` set; it is not re-raised, so the caller can keep the partial results.
    """
    outcome = LaunchOutcome()
    before = {p.pid for p in multiprocessing.active_children()}
    parent_pid = os.getpid()

    @functools.wraps(function)  # torch elastic names the run after the entrypoint's __name__
    def worker_fn(*worker_args: Any) -> Any:
        return detached(function, parent_pid, *worker_args)

    with loopback_store() as port, quiet_launch():
        thread = _LauncherThread(lambda: _run_launcher(worker_fn, args, num_processes, port))
        try:
            thread.start()
            while thread.is_alive():
                thread.join(0.1)
        except KeyboardInterrupt:
            interrupted_at = time.monotonic()
            outcome.interrupted = True
            outcome.leftover_pids = stop_workers(_workers(before))
            outcome.stop_seconds = time.monotonic() - interrupted_at
            # Elastic notices the workers are gone within its monitor interval. If the interrupt came
            # before it had forked them all, stop the late ones too; bounded, just in case.
            deadline = time.monotonic() + 5.0
            while thread.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(KeyboardInterrupt):
                    thread.join(0.1)
                    late = _workers(before)
                    if late:
                        outcome.leftover_pids = stop_workers(late)
    if thread.raised is not None and not outcome.interrupted:
        deaths = _deaths(thread.raised)
        if deaths is None:
            outcome.error = thread.raised
        else:
            outcome.died = deaths
    return outcome
