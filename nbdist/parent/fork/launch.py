"""Start the workers with ``accelerate.notebook_launcher`` (fork), stop them on an interrupt, report deaths.

Why not call the launcher plainly from the kernel's main thread:

- accelerate's fixed port 29500 collides with a previous failed run ("address already in use") and
  with a second kernel; and the rendezvous store torch creates listens on every interface (``::``).
  nbdist binds its own socket on 127.0.0.1 (port chosen by the OS, held from bind until the workers
  are gone, so no race) and hands it to a multi-tenant ``TCPStore`` that torch's static rendezvous reuses.
- torch elastic, called from the main thread, replaces the kernel's SIGINT handler with one that
  raises ``SignalException`` and never puts the old one back; it then stops workers with a 30 s grace
  period. nbdist runs the launcher on a helper thread instead (elastic then leaves signals alone) for
  as long as the warm workers live; the notebook's stop button cancels the run (``parent/pool/warm_pool.py``),
  and only workers that do not stop get SIGINT, then SIGTERM, then SIGKILL (``STOP_SCHEDULE``).
- with ``max_restarts=0`` a worker that dies makes elastic stop the others and raise
  ``ChildFailedError`` with pages of traceback; nbdist turns that into ``WorkerExit`` records.
- its banner ("Launching training on 2 CUDAs.") is printed even on a CPU run, and elastic logs from
  the launcher thread (an ERROR line when a worker is killed): both are dropped for that thread only;
  and with
  ``num_processes=1`` it runs the function inside the kernel itself, so for one process nbdist calls
  the same torch elastic launch that ``notebook_launcher`` uses for many.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from ...worker.lifecycle import detached
from ..pool.exits import WorkerExit

__all__ = [
    "STOP_SCHEDULE",
    "LauncherThread",
    "WorkerExit",
    "deaths",
    "free_port",
    "in_colab",
    "kill_workers",
    "loopback_store",
    "muted_stdout",
    "start_launcher",
    "stop_workers",
    "workers_since",
]

# Seconds to wait after each signal before sending the next: SIGINT lets a worker send the images it
# has finished; SIGTERM ends one that ignores SIGINT; SIGKILL cannot be ignored.
STOP_SCHEDULE: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 0.8),
    (signal.SIGTERM, 0.5),
    (signal.SIGKILL, 0.5),
)


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


class _ThreadMutedStream:
    """A stand-in for ``sys.stdout`` that drops what the given threads write and passes the rest on."""

    def __init__(self, stream: Any, threads: set[int]) -> None:
        self._stream = stream
        self._threads = threads

    def write(self, text: str) -> int:
        if threading.get_ident() in self._threads:
            return len(text)
        return int(self._stream.write(text) or 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _FromThreads(logging.Filter):
    """Drops log records made on nbdist's launcher threads (torch elastic's agent runs there)."""

    def __init__(self, threads: set[int]) -> None:
        super().__init__("nbdist")
        self.threads = threads

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread not in self.threads


_LAUNCHER_THREADS: set[int] = set()
_FILTER = _FromThreads(_LAUNCHER_THREADS)


def _silence_elastic_logs() -> None:
    """Keep every torch elastic log line out of the cell, at any level, even when a worker is killed.

    Levels are not enough: elastic gives each of its loggers its own level (``LOGLEVEL``, WARNING by
    default), and its ERROR line about a killed worker propagates to torch's own stderr handler. So a
    filter that drops records made on nbdist's launcher threads sits on elastic's loggers and on the
    handlers those records reach (torch's, the root's, logging's last resort). Records from any other
    thread, e.g. the user's own torch.distributed code, pass untouched.
    """
    import torch.distributed.elastic.multiprocessing.api
    import torch.distributed.launcher.api  # noqa: F401

    prefixes = ("torch.distributed", "torch.multiprocessing", "accelerate")
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(prefixes)]
    handlers = [*logging.getLogger("torch").handlers, *logging.getLogger().handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for target in [*loggers, *handlers]:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)


@contextlib.contextmanager
def muted_stdout() -> Iterator[None]:
    """Drop what the launcher threads print (accelerate's "Launching training on 2 CPUs." banner).

    Only those threads: the user's cells keep printing while a background pool starts.
    """
    original = sys.stdout
    sys.stdout = _ThreadMutedStream(original, _LAUNCHER_THREADS)  # type: ignore[assignment]
    try:
        yield
    finally:
        if isinstance(sys.stdout, _ThreadMutedStream):  # unless someone replaced it meanwhile
            sys.stdout = original


def _launch_elastic(function: Callable[..., Any], args: tuple[Any, ...], n: int, port: int) -> None:
    """``n`` forked workers through torch elastic, as ``notebook_launcher`` does where it forks."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id="nbdist",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_backend="static",
        rdzv_configs={"rank": 0},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="fork",
    )
    elastic_launch(config=config, entrypoint=function)(*args)


def _library_check_for_nbdist(original: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """accelerate's "device library imported?" check, as nbdist's launcher threads should see it.

    ``notebook_launcher`` refuses to fork when ``bitsandbytes`` is a key of ``sys.modules``, as a
    stand-in for "CUDA may be initialised". On nbdist's launcher threads that question was already
    answered directly, before the fork (``parent/machine/fork_safety.py``: torch's bad-fork probe and the
    driver's list of CUDA contexts), so the stand-in is dropped there; and a ``None`` entry (nbdist's
    "not importable here" marker, ``device_libraries.py``) is never an import, on any thread.
    """

    def check(*names: str) -> list[str]:
        found = [n for n in original(*names) if sys.modules.get(n) is not None]
        return [] if threading.get_ident() in _LAUNCHER_THREADS else found

    check.nbdist_original = original  # type: ignore[attr-defined]
    return check


def _install_library_check() -> None:
    import accelerate.launchers as launchers

    current = launchers.are_libraries_initialized
    if not hasattr(current, "nbdist_original"):
        launchers.are_libraries_initialized = _library_check_for_nbdist(current)


def in_colab() -> bool:
    """accelerate's own test for Colab (``launchers.py``): the shell's repr names ``google.colab``."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and "google.colab" in str(ipython.get_ipython())


def _run_launcher(function: Callable[..., Any], args: tuple[Any, ...], n: int, port: int) -> None:
    if n == 1 or in_colab():  # notebook_launcher would call the function here, in the kernel
        _launch_elastic(function, args, n, port)
        return
    from accelerate import notebook_launcher

    _install_library_check()

    notebook_launcher(function, args=args, num_processes=n, use_port=str(port), master_addr="127.0.0.1")


class LauncherThread(threading.Thread):
    """Runs the blocking launcher for as long as the workers live; keeps what it raised.

    The workers are forked from this thread, and ``PR_SET_PDEATHSIG`` ties them to it: it must (and
    does) live exactly as long as they do.
    """

    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__(name="nbdist-launcher", daemon=True)
        self._target_fn = target
        self.raised: BaseException | None = None

    def run(self) -> None:
        _LAUNCHER_THREADS.add(threading.get_ident())
        try:
            self._target_fn()
        except BaseException as exc:  # handed to the main thread, never lost
            self.raised = exc
        finally:
            # ipykernel keeps threads started in a cell; without this the run's spec (its queue's pipe,
            # the pipeline) would live as long as the kernel. threading.Thread.run does the same.
            del self._target_fn
            _LAUNCHER_THREADS.discard(threading.get_ident())


def start_launcher(
    function: Callable[..., Any], args: tuple[Any, ...], num_processes: int, port: int
) -> LauncherThread:
    """Fork ``num_processes`` workers running ``function(*args)`` (detached from the kernel) on a launcher thread."""
    _silence_elastic_logs()
    parent_pid = os.getpid()

    @functools.wraps(function)  # torch elastic names the run after the entrypoint's __name__
    def worker_fn(*worker_args: Any) -> Any:
        return detached(function, parent_pid, *worker_args)

    thread = LauncherThread(lambda: _run_launcher(worker_fn, args, num_processes, port))
    thread.start()
    return thread


def workers_since(before: set[int]) -> list[Any]:
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


def kill_workers(workers: list[Any]) -> None:
    """SIGKILL at once: for workers already told to stop that cannot (``WorkerGroup._end_if_broken``)."""
    for proc in workers:
        _signal_worker(proc.pid, signal.SIGKILL)


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


def deaths(exc: BaseException) -> list[WorkerExit] | None:
    """The worker deaths behind torch elastic's ``ChildFailedError``, or None for another error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not isinstance(exc, ChildFailedError):
        return None
    return [WorkerExit(f.local_rank, f.pid, f.exitcode) for f in exc.failures.values()]
