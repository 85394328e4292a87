"""Make a worker's share of a run's images and send each one the moment it is ready.

The share is accelerate's ``split_between_processes`` (static) or the next job pulled from a shared
counter (dynamic); either way every image goes through ``run_batch`` and leaves through the outbox.
A cancelled run stops within one denoising step, and the image that was being made is dropped.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..call_settings import CallSettings
from ..jobs import ImageJob
from ..messages import ImageFailed, StepProgress
from .generation import RunCancelled, run_batch
from .outbox import Outbox

__all__ = ["batches", "make_images", "static_share"]


def static_share(state: Any, jobs: Sequence[ImageJob]) -> list[ImageJob]:
    """This worker's contiguous share (accelerate's ``split_between_processes``: never padded)."""
    with state.split_between_processes(list(jobs)) as share:
        return list(share)


def batches(jobs: Sequence[ImageJob], size: int, next_job: Any = None) -> Iterator[list[ImageJob]]:
    """Batches of ``jobs``: in order (``next_job`` None), or pulled from the shared counter (dynamic)."""
    if next_job is None:
        for start in range(0, len(jobs), size):
            yield list(jobs[start : start + size])
        return
    while True:
        with next_job.get_lock():
            start = next_job.value
            next_job.value = min(start + size, len(jobs))
        if start >= len(jobs):
            return
        yield list(jobs[start : start + size])


def make_images(
    worker: Any,
    work: Iterator[list[ImageJob]],
    call: CallSettings,
    outbox: Outbox,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Make every batch of ``work`` and send the images; returns False if the run was cancelled."""
    for pulled in work:
        for batch in _same_settings(pulled):
            if should_stop is not None and should_stop():
                return False
            try:
                _run_and_send(worker, batch, call, outbox, should_stop)
            except RunCancelled:
                return False
    return True


def _same_settings(jobs: list[ImageJob]) -> list[list[ImageJob]]:
    """Split a batch where the sweep values change: one pipeline call takes one set of arguments."""
    groups: list[list[ImageJob]] = []
    for job in jobs:
        if groups and groups[-1][0].params == job.params:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _run_and_send(
    worker: Any,
    batch: list[ImageJob],
    call: CallSettings,
    outbox: Outbox,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Generate a batch; if it raises, retry its images one by one so only the bad ones fail."""
    rank, device = worker.rank, worker.device
    indices = tuple(job.index for job in batch)

    def on_step(step: int, total: int) -> None:
        outbox.send(StepProgress(rank, indices, step, total))

    start = time.perf_counter()
    try:
        if batch[0].params or call.scheduler is not None:
            worker.use_scheduler(batch[0].settings.get("scheduler", call.scheduler))
        images = run_batch(worker.pipe, batch, call, on_step, should_stop)
    except RunCancelled:
        raise
    except Exception as exc:
        if len(batch) > 1:
            for job in batch:
                _run_and_send(worker, [job], call, outbox, should_stop)
            return
        outbox.send(ImageFailed(batch[0].index, rank, device, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    seconds = (time.perf_counter() - start) / len(batch)
    for job, made in zip(batch, images, strict=True):
        if made.image is None:
            outbox.send(ImageFailed(job.index, rank, device, made.error or "no image", ""))
        else:
            outbox.send_image(job.index, rank, device, seconds, made.image, made.note)
