"""Count GPUs and check the kernel is safe to fork, without initialising CUDA.

``torch.cuda.device_count()`` and ``is_available()`` initialise the CUDA driver in the calling
process; a kernel that did so can no longer fork GPU workers ("Cannot re-initialize CUDA in forked
subprocess"). So the parent only reads what the driver exposes in files and the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

__all__ = ["cpu_count", "cuda_initialized", "visible_gpu_count"]


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
    """GPUs the NVIDIA driver knows: its /proc entries, else ``nvidia-smi -L``; 0 without a driver."""
    proc = "/proc/driver/nvidia/gpus"
    if os.path.isdir(proc):
        return len(os.listdir(proc))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def visible_gpu_count() -> int:
    """GPUs this process could use, counted without touching CUDA."""
    physical = _driver_gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return physical
    return min(physical, _from_visible_devices(visible))


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
    """Whether CUDA was initialised in this process, so that forked workers could not use it.

    Without torch imported nothing here can have initialised it through torch; a CPU-only build of
    torch cannot initialise it at all. Otherwise: torch's own flag, then the bad-fork probe.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if torch.cuda.is_initialized():
        return True
    if not torch.backends.cuda.is_built():
        return False
    return _child_in_bad_fork()
