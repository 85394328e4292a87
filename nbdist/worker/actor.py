"""A warm worker as a Ray actor (``--cluster``): the forked worker's setup and making, served over Ray.

The actor loads the pipeline itself on its node (a model id or a folder every node reads; a pipeline
object given in Python arrives once through Ray's object store), places it on the GPU Ray gave it
(or on the CPU), and then makes the jobs the kernel hands it, a batch per call. Each call is a Ray
streaming generator: every message (progress, each image the moment it is decoded) reaches the kernel
while the call still runs, through the same ``Outbox`` a forked worker sends with.

The kernel starts the actor with two concurrency groups, ``work`` (one thread: calls run one after
another) and ``control``: ``cancel`` runs there while a call is making images, and the step callback
reads the flag it sets after every denoising step, so a Stop ends the batch within one step and the
actor, with its pipeline, stays warm for the next cell. Nothing here imports ``ray`` at module level:
the kernel wraps the class with ``ray.remote`` only for ``--cluster``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..jobs import ImageJob
from ..messages import Message, WorkerStarted
from ..spec import WorkerSetup
from .lifecycle import set_process_title
from .making import batches, make_images
from .outbox import Outbox
from .quiet import redirect_output, silence_libraries
from .setup import ReadyWorker, get_ready

__all__ = ["CONTROL", "WORK", "GenerationActor"]

WORK = "work"  # the concurrency group that makes images, one call at a time
CONTROL = "control"  # the concurrency group where a cancel runs while a call makes images
_END = object()


class GenerationActor:
    """One worker of a cluster: rank ``rank``, its pipeline placed by ``ready``, then ``make`` per batch."""

    def __init__(self, setup: WorkerSetup, rank: int, pipeline: Any = None) -> None:
        self._setup = replace(setup, pipeline=pipeline)
        self._rank = rank
        self._cancelled = -1  # runs with an id <= this are cancelled
        self._worker: ReadyWorker | None = None

    def ready(self) -> WorkerStarted:
        """Output to a log file on this node, libraries quiet, the pipeline loaded and placed; the hello."""
        import ray
        import torch

        setup = self._setup
        log_dir = tempfile.mkdtemp(prefix="nbdist-actor-")
        set_process_title(self._rank, setup.device_type)
        redirect_output(os.path.join(log_dir, f"worker-{self._rank}.log"))
        silence_libraries()
        torch.set_num_threads(setup.threads_per_worker)
        worker, hello = get_ready(replace(setup, log_dir=log_dir))
        worker.rank = self._rank  # a lone process to accelerate: rank 0; its rank among the actors is ours
        self._worker = worker
        return replace(hello, rank=self._rank, node=ray.get_runtime_context().get_node_id())

    def make(self, run: int, jobs: list[ImageJob], settings: tuple[Any, ...]) -> Iterator[Message]:
        """Make ``jobs`` (one batch of run ``run``) and yield each message as the worker sends it."""
        options, call, init_files, save = settings  # save: PNG bytes (folder None), written by the kernel
        call = self._with_local_inits(call, init_files)
        worker = self._worker
        if worker is None or self._cancelled >= run:
            return
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        outbox = Outbox(out, options.thumbnail_size, save)

        def work() -> None:
            try:
                worker.use_scheduler(call.scheduler)
                make_images(worker, batches(jobs, len(jobs)), call, outbox, lambda: self._cancelled >= run)
            finally:
                outbox.close()
                out.put(_END)

        threading.Thread(target=work, name="nbdist-actor-make", daemon=True).start()
        while (item := out.get()) is not _END:
            yield item

    def _with_local_inits(self, call: Any, files: dict[str, bytes]) -> Any:
        """``call`` with its ``--init`` paths replaced by copies on this node (written once per content)."""
        if not files:
            return call
        folder = Path(tempfile.gettempdir()) / "nbdist-init"
        folder.mkdir(exist_ok=True)
        local = {}
        for path, data in files.items():
            copy = folder / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
            if not copy.exists():
                part = copy.with_suffix(".part")
                part.write_bytes(data)
                part.replace(copy)
            local[path] = str(copy)
        init = local[call.init] if isinstance(call.init, str) else tuple(local[p] for p in call.init)
        return replace(call, init=init)

    def cancel(self, run: int) -> None:
        """Cancel run ``run`` and any before it (runs in the ``control`` group, beside a ``make``)."""
        self._cancelled = max(self._cancelled, run)
