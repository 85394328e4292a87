"""A process that makes one run's share and exits: the CLI under ``torchrun`` / ``accelerate launch``.

Those launchers start the processes themselves, so each one loads the model, learns its rank and world
size from the environment (accelerate's ``PartialState``), takes its share, and ends. The kernel's warm
workers run ``serve`` instead (``worker/serve.py``); both use the same setup and image-making code.
"""

from __future__ import annotations

import dataclasses
import traceback

from ..messages import WorkerFinished
from ..spec import RunSpec
from .making import batches, make_images, static_share
from .outbox import Outbox
from .setup import begin, get_ready

__all__ = ["run_worker"]


def run_worker(spec: RunSpec) -> None:
    """Entry point of one launched process: get ready, make this process's share, say goodbye."""
    rank = begin(spec)
    outbox = Outbox(spec.queue, spec.options.thumbnail_size, None)  # pixels: the launcher's DiskWriter saves them
    try:
        worker, hello = get_ready(spec)
        rank = worker.rank
        if spec.next_job is None:
            share = static_share(worker.state, spec.jobs)
            work = batches(share, spec.options.batch_size)
            hello = dataclasses.replace(hello, num_jobs=len(share))
        else:
            work = batches(spec.jobs, spec.options.batch_size, spec.next_job)
        from ..call_settings import resolve_call

        call = spec.call or resolve_call(worker.pipe, spec.model, spec.options)
        worker.use_scheduler(call.scheduler)
        outbox.send(hello)
        make_images(worker, work, call, outbox)
        outbox.send(WorkerFinished(rank))
    except Exception as exc:  # a setup failure: report it instead of taking the other workers down
        outbox.send(WorkerFinished(rank, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()))
    finally:
        outbox.close()
