"""A warm pool worker: set up once, then make runs from its inbox until told to stop.

The kernel forks these once (``notebook_launcher``); each places the pipeline on its device and then
waits. A ``RunCommand`` reaches every worker's inbox; each takes its share (``split_between_processes``,
or pulls jobs for ``--schedule dynamic``) and answers ``RunStarted`` ... images ... ``RunFinished``.
Cancelling is a shared counter the parent raises: the step callback reads it after every denoising
step, so a cancelled run ends within one step and the worker is ready for the next run at once.
"""

from __future__ import annotations

import traceback
from typing import Any

from ..messages import RunCommand, RunFinished, RunStarted, WorkerFinished
from ..spec import PoolSpec
from .making import batches, make_images, static_share
from .outbox import Outbox
from .setup import ReadyWorker, begin, get_ready

__all__ = ["serve"]


def serve(spec: PoolSpec) -> None:
    """Entry point of a pool worker process."""
    rank = begin(spec)
    outbox = Outbox(spec.queue, spec.options.thumbnail_size, None)  # each RunCommand says where its images go
    try:
        worker, hello = get_ready(spec)
    except Exception as exc:  # a setup failure: report it, the parent ends the pool
        outbox.send(WorkerFinished(rank, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()))
        outbox.close()
        return
    outbox.send(hello)
    inbox = spec.inboxes[worker.rank]
    try:
        while (command := inbox.get()) is not None:
            _serve_run(worker, command, spec, outbox)
        outbox.send(WorkerFinished(worker.rank))
    finally:
        outbox.close()


def _serve_run(worker: ReadyWorker, command: RunCommand, spec: PoolSpec, outbox: Outbox) -> None:
    """One run: announce the share, make it, and always end with ``RunFinished``."""
    run = command.run

    def cancelled() -> bool:
        return bool(spec.cancel.value >= run)

    try:
        work: Any
        if command.options.schedule == "dynamic":
            work, planned = batches(command.jobs, command.options.batch_size, spec.next_job), -1
        else:
            share = static_share(worker.state, command.jobs)
            work, planned = batches(share, command.options.batch_size), len(share)
        worker.use_scheduler(command.call.scheduler)
        outbox.use(command.save)
        outbox.send(RunStarted(worker.rank, run, planned))
        finished = make_images(worker, work, command.call, outbox, cancelled)
        outbox.send(RunFinished(worker.rank, run, cancelled=not finished))
    except Exception as exc:
        outbox.send(
            RunFinished(worker.rank, run, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        )
