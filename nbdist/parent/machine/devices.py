"""Count GPUs and check the kernel is safe to fork, without initialising CUDA.

``torch.cuda.device_count()`` and ``is_available()`` initialise the CUDA driver in the calling
process; a kernel that did so can no longer fork GPU workers ("Cannot re-initialize CUDA in forked
subprocess"). So the parent only asks ``nvidia-smi`` (``gpus.query_gpus``) and reads what the driver
exposes in files and the environment.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ...options import NbdistUsageError
from .gpus import GpuQuery, query_gpus

__all__ = ["GpuChoice", "choose_gpus", "cpu_count", "cuda_initialized", "fork_spoiled_by", "visible_gpu_count"]


def _from_visible_devices(value: str) -> int:
    """CUDA stops at the first invalid entry of ``CUDA_VISIBLE_DEVICES``; so do we."""
    count = 0
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        count += 1
    return count


def _driver_gpu_count() -> int:
    """GPUs the NVIDIA driver lists in /proc: the count when nvidia-smi cannot answer (0 without a driver)."""
    proc = "/proc/driver/nvidia/gpus"
    return len(os.listdir(proc)) if os.path.isdir(proc) else 0


def visible_gpu_count(query: GpuQuery | None = None) -> int:
    """GPUs this process could use, counted without touching CUDA.

    nvidia-smi's answer (``CUDA_VISIBLE_DEVICES`` applied by index or UUID) when it gives one; only
    when it cannot run (a container with the driver but no nvidia-smi on PATH) the driver's /proc
    entries, cut by the number of ``CUDA_VISIBLE_DEVICES`` entries.
    """
    query = query if query is not None else query_gpus()
    if query.gpus or query.problem is None or "too old" in query.problem:
        return len(query.gpus)
    physical = _driver_gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return physical if visible is None else min(physical, _from_visible_devices(visible))


@dataclass(frozen=True)
class GpuChoice:
    """The GPUs a run's workers use: how many, what the workers' ``CUDA_VISIBLE_DEVICES`` must be, a note."""

    count: int
    gpus: GpuQuery  # the chosen GPUs in worker order (their facts: capability for the dtype, memory)
    cuda_visible: str | None = None  # None: the workers keep the kernel's view (rank r uses visible GPU r)
    note: str | None = None


def choose_gpus(num_processes: int | None, query: GpuQuery | None = None) -> GpuChoice:
    """One worker per compute GPU by default; ``-n`` beyond them takes display GPUs too (the user asked).

    A GPU driving a screen has less free memory and makes the desktop stutter, so it is left out
    when headless ones exist (``GpuQuery.compute_gpus``). Rank r of the workers uses CUDA device r,
    so when the chosen GPUs are not the first visible ones the workers get a narrowed
    ``CUDA_VISIBLE_DEVICES`` (UUIDs: unambiguous whatever ``CUDA_DEVICE_ORDER`` says), set right after
    the fork: never wider than the kernel's own.
    """
    query = query if query is not None else query_gpus()
    visible = query.gpus
    total = visible_gpu_count(query)
    if num_processes is not None and num_processes > total:
        raise NbdistUsageError(f"-n {num_processes}: only {total} GPU(s) visible")
    if not visible:  # counted from /proc: no facts to choose by
        return GpuChoice(num_processes or total, query)
    compute = query.compute_gpus
    count = num_processes or len(compute)
    extra = [g for g in visible if g not in compute][: max(0, count - len(compute))]
    chosen = sorted(compute[:count] + extra, key=lambda g: g.index)
    mig = any(g.uuid.startswith("MIG-") for g in chosen)  # one instance per worker: always named (setup.py)
    cuda_visible = None if chosen == visible[:count] and not mig else ",".join(g.uuid for g in chosen)
    left_out = [g for g in visible if g.display_active and g not in chosen]
    note = None
    if left_out and num_processes is None:
        which = ", ".join(f"GPU {g.index} ({g.name})" for g in left_out)
        drives, it = ("drives", "it") if len(left_out) == 1 else ("drive", "them")
        note = f"nbdist: {which} {drives} a display, left out; -n {len(visible)} to use {it} too"
    return GpuChoice(count, GpuQuery(chosen, query.problem), cuda_visible, note)


def cpu_count() -> int:
    """Cores this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _child_in_bad_fork() -> bool:
    """Fork a throwaway child and ask torch there whether it is in a "bad fork".

    torch marks a child as poisoned (``torch.cuda._is_in_bad_fork()``) when CUDA was initialised in
    its parent, through whatever path, including ones that ``torch.cuda.is_initialized()`` in the
    parent does not report (Lightning switched to this check for that reason). The child only reads a
    flag and leaves with ``os._exit``: no atexit handler, no flush, nothing of the kernel's state runs.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            import torch

            bad = bool(torch.cuda._is_in_bad_fork())
        except BaseException:
            bad = False
        os._exit(1 if bad else 0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 1


def cuda_initialized() -> bool:
    """Whether CUDA was initialised (or probed) in this process, so that forked workers could not use it."""
    return fork_spoiled_by() is not None


def fork_spoiled_by() -> str | None:
    """``"initialised"``, ``"probed"`` (a device count asked of the CUDA runtime) or None: can workers use CUDA?

    Without torch imported nothing here can have spoiled fork through torch; a CPU-only build of torch
    cannot at all. Otherwise torch's own flag, then the bad-fork probe: a child is spoiled by an
    ``is_available()`` answered by the CUDA runtime too, which initialises nothing that torch reports.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if torch.cuda.is_initialized():
        return "initialised"
    if not torch.backends.cuda.is_built():
        return None
    return "probed" if _child_in_bad_fork() else None
