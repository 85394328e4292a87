"""What a worker is given: built in the parent and inherited by every forked worker.

Under ``notebook_launcher`` (fork) the spec, the already-loaded pipeline inside it and the queues are
inherited, not pickled, so a multi-gigabyte pipeline costs nothing to hand over and is shared
copy-on-write. Under ``torchrun`` / ``accelerate launch`` each process builds its own spec and loads
the model itself (``pipeline`` is then ``None`` and ``model`` is used).

Two shapes: a ``PoolSpec`` for the warm workers the kernel keeps (set up once, then runs arrive in
their inboxes), and a ``RunSpec`` for a process that makes one run's share and exits (the CLI under
``torchrun``). Both carry a ``WorkerSetup``: how to get a pipeline onto this worker's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .jobs import ImageJob
from .options import GenerateOptions

__all__ = ["PoolSpec", "RunSpec", "WorkerSetup"]


@dataclass
class WorkerSetup:
    """How a worker gets ready: which pipeline, on what kind of device, with how many threads."""

    device_type: str  # "cuda" or "cpu"
    dtype: str
    threads_per_worker: int
    log_dir: str
    queue: Any  # a fork-context multiprocessing.Queue of nbdist.messages (worker -> parent)
    options: GenerateOptions  # the loading options (allow_pickle, device_map, max_memory, thumbnail_size)
    pipeline: Any = None  # a diffusers pipeline loaded in the parent, or None to load ``model``
    model: str | None = None
    # CUDA_VISIBLE_DEVICES for the worker, set in ``begin`` right after the fork (safe only because the
    # kernel never starts CUDA): the compute GPUs the plan chose, so rank r lands on the r-th of them.
    cuda_visible: str | None = None


@dataclass
class RunSpec(WorkerSetup):
    """One run in processes that exit after it (``torchrun`` / ``accelerate launch``)."""

    jobs: list[ImageJob] = field(default_factory=list)
    next_job: Any = None  # a shared multiprocessing.Value counter for --schedule dynamic
    call: Any = None  # CallSettings, or None: resolved by each process once its pipeline is loaded


@dataclass
class PoolSpec(WorkerSetup):
    """Warm workers: one inbox per rank for ``RunCommand``s, shared counters for cancel and pull."""

    inboxes: list[Any] = field(default_factory=list)  # fork-context SimpleQueues, one per rank
    cancel: Any = None  # multiprocessing.Value("q"): runs with an id <= this value are cancelled
    next_job: Any = None  # multiprocessing.Value("q"): the next job to pull (--schedule dynamic), reset per run
