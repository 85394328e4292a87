"""Keep a worker's output out of the notebook cell, without losing it.

A forked worker inherits the kernel's file descriptors 1 and 2, which ipykernel forwards into the
cell: library progress bars, warnings and a user's own prints from every worker would land there.
Each worker instead writes to its own log file (file descriptors and Python streams alike), which the
result object exposes, and turns off the libraries' chatter that nobody asked for.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["redirect_output", "silence_libraries"]


def redirect_output(path: str) -> None:
    """Point fds 1 and 2, ``sys.stdout`` and ``sys.stderr`` at ``path`` (line-buffered, appended)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115


def silence_libraries() -> None:
    """Progress bars and advisory warnings of diffusers, transformers and torch are noise per worker."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch|diffusers|transformers|accelerate")
    for name in ("diffusers", "transformers", "accelerate", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
