"""Refuse to fork GPU workers from a kernel that already holds a CUDA context, and say who made it.

A forked child cannot use CUDA once its parent initialised it, or merely asked the CUDA runtime how many
GPUs there are ("Cannot re-initialize CUDA in forked subprocess"): every worker would fail after the
fork, each with its own traceback. Two signals, both read without touching CUDA here:

- torch's own: ``torch.cuda.is_initialized()``, then its bad-fork flag asked in a throwaway child
  (``devices.fork_spoiled_by``), which also sees initialisations torch's flag misses;
- the driver's: this process among ``nvidia-smi --query-compute-apps=pid``, which sees a context made
  by anything (TensorFlow, JAX, CuPy, Numba, bitsandbytes, a user's ``.cuda()``). In a container with
  its own pid namespace the driver may report host pids; then this signal says nothing (never wrong).
"""

from __future__ import annotations

import os
import sys

from ... import device_libraries
from ...device_libraries import NVML_CHECK
from ...options import NbdistUsageError
from .devices import fork_spoiled_by
from .gpus import compute_apps

__all__ = ["check_fork_safe", "cuda_context_cause"]

# Modules whose presence makes them a likely maker of the context, and how to name them to a user.
_SUSPECTS = {
    "bitsandbytes": "bitsandbytes (imported by diffusers/transformers/peft before nbdist)",
    "tensorflow": "TensorFlow",
    "jax": "JAX",
    "cupy": "CuPy",
    "numba.cuda": "Numba",
    "pycuda": "PyCUDA",
}


def _suspects() -> list[str]:
    return [label for module, label in _SUSPECTS.items() if sys.modules.get(module) is not None]


def cuda_context_cause(spoiled: str | None) -> str | None:
    """Why this process has a CUDA context (a short phrase), or None; ``spoiled`` is ``fork_spoiled_by()``."""
    if spoiled == "initialised":
        suspects = _suspects()
        return f"by {', '.join(suspects)}" if suspects else "by torch (a .cuda(), .to('cuda') or torch.cuda call)"
    apps = compute_apps()
    if apps is not None and os.getpid() in apps:
        suspects = _suspects()
        return f"by {', '.join(suspects)}" if suspects else "by a library in this kernel (the driver lists its pid)"
    return None


def _probed_message() -> str:
    """The CUDA runtime was asked for its device count here (no context): the cause and the fixes that work."""
    if device_libraries.nvml_asked_from_the_start:  # torch asked NVML and fell back: NVML cannot answer here
        why = "NVML could not answer here, so torch asked the CUDA runtime"
        fix = "restart the kernel and keep torch.cuda calls out of it until the workers have started"
    else:
        why = "diffusers or transformers imported before nbdist, or a torch.cuda.is_available() call"
        fix = (
            "restart the kernel and run %load_ext nbdist (or import nbdist) in its first cell, or start the "
            f"kernel with {NVML_CHECK}=1 in its environment"
        )
    said = f"CUDA was probed in this kernel before the workers started ({why})"
    return f"{said}, so forked workers cannot use the GPU: {fix}"


def check_fork_safe() -> None:
    """Raise ``NbdistUsageError`` (one line, the cause and the fix) if GPU workers cannot be forked from here."""
    spoiled = fork_spoiled_by()
    cause = cuda_context_cause(spoiled)
    if cause is not None:
        raise NbdistUsageError(
            f"CUDA is already initialised in this kernel ({cause}), so forked workers cannot use the GPU. "
            "Restart the kernel and run %load_ext nbdist (or import nbdist) first, before any cell that touches the "
            "GPU; keep GPU work in the kernel out of it, or pass --device cpu"
        )
    if spoiled == "probed":
        raise NbdistUsageError(_probed_message())
