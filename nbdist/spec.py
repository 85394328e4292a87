"""What a worker is given: a ``RunSpec`` built in the parent and inherited by every forked worker.

Under ``notebook_launcher`` (fork) the spec, the already-loaded pipeline inside it and the queue are
inherited, not pickled, so a multi-gigabyte pipeline costs nothing to hand over and is shared
copy-on-write. Under ``torchrun`` / ``accelerate launch`` each process builds its own spec and loads
the model itself (``pipeline`` is then ``None`` and ``model`` is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .jobs import ImageJob
from .options import GenerateOptions

__all__ = ["RunSpec"]


@dataclass
class RunSpec:
    """Everything the worker function needs; one per run, the same object in every worker."""

    jobs: list[ImageJob]
    options: GenerateOptions
    device_type: str  # "cuda" or "cpu"
    dtype: str
    threads_per_worker: int
    log_dir: str
    queue: Any  # a fork-context multiprocessing.Queue of nbdist.messages
    pipeline: Any = None  # a diffusers pipeline loaded in the parent, or None to load ``model``
    model: str | None = None
    next_job: Any = None  # a shared multiprocessing.Value counter for --schedule dynamic
