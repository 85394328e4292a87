"""Keep libraries that start CUDA on import out of the kernel, and give them back to the workers.

``bitsandbytes`` initialises CUDA when it is imported (accelerate #1807, #1831), and a kernel with a
CUDA context can no longer fork GPU workers. It is imported behind the user's back: diffusers 0.42
imports it while importing *any* pipeline whenever it is installed (``quantizers/bitsandbytes/utils``),
and then ``accelerate.notebook_launcher`` refuses to start at all ("Libraries known to initialize
device upon import have been imported already"), on a CPU as on GPUs. Installed is common: Kaggle's
and many LLM images ship it.

So the process that forks workers marks such a library *absent* while it is not yet imported:
``sys.modules[name] = None`` is Python's own "not importable" marker, so ``importlib.util.find_spec``
returns None and diffusers, transformers, peft and accelerate all take their "not installed" branch.
The workers, forked from that process, remove the marker and reset those libraries' cached
availability flags (``restore_in_worker``), so 4/8-bit loading works where the GPU is used. Nothing
is hidden in processes started by torchrun / accelerate launch: each of those is its own GPU worker.

The CUDA build of torch has a second way to spoil fork without any library: asking whether CUDA is
available (``cudaGetDeviceCount``) registers torch's fork handler, and every child forked afterwards is in
a "bad fork" and cannot use CUDA. diffusers asks at import (``SUPPORTED_DEVICE_MAP`` in
``pipeline_utils``), so ``import diffusers`` alone spoils a kernel. ``ask_nvml_for_cuda`` makes torch ask
NVML instead (``PYTORCH_NVML_BASED_CUDA_CHECK=1``, what accelerate does in its own checks), which spoils
nothing; nbdist sets it when it is imported, before anything can import diffusers.

Neutral ground: used by the parent (hide) and by the workers (restore); imports neither side.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

__all__ = [
    "DEVICE_STARTING_LIBRARIES",
    "NVML_CHECK",
    "ask_nvml_for_cuda",
    "hidden_libraries",
    "hide_in_parent",
    "import_in_worker",
    "imported_device_libraries",
    "restore_in_worker",
]

DEVICE_STARTING_LIBRARIES = ("bitsandbytes",)

# Launched by torchrun / accelerate launch: this process is a worker itself and loads its own model.
_LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
# Whether torch already asked NVML before nbdist was imported (the variable was set): a spoiled fork
# then means NVML could not answer, not that something asked too early.
nvml_asked_from_the_start = False


def ask_nvml_for_cuda() -> bool:
    """Make ``torch.cuda.is_available()`` ask NVML (no fork poisoning); False where the user set it otherwise.

    torch reads the variable at each call, so setting it before diffusers is imported is enough. Where
    NVML cannot answer (no driver, a ``MIG-`` entry in ``CUDA_VISIBLE_DEVICES``) torch still falls back
    to the runtime call; the fork check before a GPU run (``parent/machine/fork_safety.py``) catches that.
    """
    global nvml_asked_from_the_start
    nvml_asked_from_the_start = os.environ.get(NVML_CHECK) == "1"
    return os.environ.setdefault(NVML_CHECK, "1") == "1"


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def hide_in_parent() -> list[str]:
    """Mark each installed, not yet imported device-starting library as absent here; returns their names.

    A no-op in processes a launcher started (they are workers) and with ``NBDIST_HIDE_DEVICE_LIBRARIES=0``.
    """
    if os.environ.get("NBDIST_HIDE_DEVICE_LIBRARIES", "1") == "0":
        return []
    if any(v in os.environ for v in _LAUNCHER_VARIABLES):
        return []
    hidden = []
    for name in DEVICE_STARTING_LIBRARIES:
        if name not in sys.modules and _installed(name):
            sys.modules[name] = None  # type: ignore[assignment]
            hidden.append(name)
    return hidden


def hidden_libraries() -> list[str]:
    """The libraries this process keeps out (their marker is in place)."""
    return [n for n in DEVICE_STARTING_LIBRARIES if n in sys.modules and sys.modules[n] is None]


def imported_device_libraries() -> list[str]:
    """Device-starting libraries really imported in this process (by the user, or before nbdist)."""
    return [n for n in DEVICE_STARTING_LIBRARIES if sys.modules.get(n) is not None]


def _reset_flags() -> None:
    """Recompute the "is bitsandbytes installed" answers that libraries cached while it was hidden."""
    diffusers_utils = sys.modules.get("diffusers.utils.import_utils")
    if diffusers_utils is not None and hasattr(diffusers_utils, "_bitsandbytes_available"):
        available, version = diffusers_utils._is_package_available("bitsandbytes")
        diffusers_utils._bitsandbytes_available, diffusers_utils._bitsandbytes_version = available, version
    checks: list[Any] = []
    transformers_utils = sys.modules.get("transformers.utils.import_utils")
    if transformers_utils is not None:
        checks.append(getattr(transformers_utils, "is_bitsandbytes_available", None))
    peft_utils = sys.modules.get("peft.import_utils")
    if peft_utils is not None:
        checks += [getattr(peft_utils, "is_bnb_available", None), getattr(peft_utils, "is_bnb_4bit_available", None)]
    for check in checks:
        clear = getattr(check, "cache_clear", None)
        if clear is not None:
            clear()


def restore_in_worker() -> list[str]:
    """In a forked worker: make the hidden libraries importable again; returns their names.

    Cheap: nothing is imported here (a run that does not quantize never pays bitsandbytes' import);
    ``import_in_worker`` does that for the runs that need it.
    """
    restored = hidden_libraries()
    for name in restored:
        del sys.modules[name]
    if restored:
        _reset_flags()
    return restored


def import_in_worker(name: str) -> Any:
    """Import ``name`` in a worker and hand it to the modules that skipped their ``import`` while it was hidden.

    diffusers' ``quantizers/bitsandbytes/utils`` runs ``import bitsandbytes as bnb`` at its top only
    when the library was available then; its functions use the global ``bnb``.
    """
    restore_in_worker()
    module = importlib.import_module(name)
    if name == "bitsandbytes":
        utils = sys.modules.get("diffusers.quantizers.bitsandbytes.utils")
        if utils is not None and not hasattr(utils, "bnb"):
            utils.bnb = module  # type: ignore[attr-defined]
    return module
