"""How a forked worker detaches from the kernel and how it reacts to signals.

A worker forked from a notebook kernel inherits the kernel's process group and its signal handlers,
and both are wrong for it:

- the kernel's process group receives the notebook's interrupt (jupyter_client signals the whole
  group), and a terminal's Ctrl-C; the kernel must decide how its workers stop, so each worker leads
  its own group (the kernel signals that group, which also reaches anything the worker started);
- torch elastic replaces the kernel's SIGINT/SIGTERM handlers with one that raises
  ``SignalException`` (an ``Exception``), which the worker's per-image ``except Exception`` would
  swallow: an interrupted worker would carry on with its next image until it was SIGKILLed;
- if the kernel dies (crash, "restart kernel", SIGKILL) nothing would ever stop the workers; the
  kernel asks the OS to SIGKILL them when it goes (``PR_SET_PDEATHSIG``; torch sets SIGINT, which a
  busy worker may not act on).

SIGINT means "stop now, keep what is done": it raises ``KeyboardInterrupt``, the worker's ``finally``
flushes the images it already made, and it exits with status 130 (never 0: see ``detached``).
SIGTERM does the same through ``SystemExit``, so a
worker stopped from outside ends with a non-zero status that the parent reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["detached", "set_parent_death_signal", "set_process_title"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent (thread) exits; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_process_title(rank: int, device: str) -> str:
    """Name this worker in ``ps``/``top``: ``nbdist worker 0 cpu``; returns the short name (``comm``).

    A forked worker is otherwise indistinguishable from the kernel it came from (same command line),
    so a user looking for what holds a GPU, or what to kill, cannot tell them apart. With
    ``setproctitle`` installed the whole command line becomes the title; the kernel-visible name
    (``/proc/PID/comm``, what ``ps -e``/``top`` show, 15 bytes at most) is always set with ``prctl``.
    """
    title = f"nbdist worker {rank} {device}"
    try:
        import setproctitle  # optional: not a dependency of nbdist
    except ImportError:
        pass
    else:
        setproctitle.setproctitle(title)
    short = f"nbdist w{rank} {device.replace('cuda:', 'gpu')}"[:15]
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, short.encode(), 0, 0, 0)
    return short


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _prepare(parent_pid: int) -> None:
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the kernel died before the line above: nobody will read our images
        os._exit(1)
    with contextlib.suppress(OSError):  # not permitted: the parent falls back to signalling the pid
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    for name in ("SIGHUP", "SIGQUIT"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_DFL)
    # Single-node runs talk over loopback only: gloo would otherwise listen on the host's address.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def detached(function: Callable[..., Any], parent_pid: int, *args: Any) -> Any:
    """Run ``function(*args)`` in a forked worker after detaching it from the kernel (see module doc)."""
    _prepare(parent_pid)
    try:
        return function(*args)
    except KeyboardInterrupt:
        # torch's process wrapper takes a KeyboardInterrupt for "killed by the parent" and exits 0 without
        # a return value; torch elastic then waits for that value forever and the run never ends. A
        # non-zero status is what a stopped worker is: the launcher returns and the parent reports it.
        raise SystemExit(128 + signal.SIGINT) from None
