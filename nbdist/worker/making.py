"""Make a worker's share of a run's images and send each one the moment it is ready.

The share is accelerate's ``split_between_processes`` (static) or the next job pulled from a shared
counter (dynamic); either way every image goes through ``run_batch`` and leaves through the outbox.
A cancelled run stops within one denoising step, and the image that was being made is dropped.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..call_settings import CallSettings
from ..jobs import ImageJob
from ..loras import active_loras
from ..messages import ImageFailed, StepProgress
from .decode_retry import IN_DECODE
from .freeing import free_memory, let_go
from .generation import Made, RunCancelled, run_batch
from .outbox import Outbox
from .step_speed import after_call, before_call

__all__ = ["OUT_OF_MEMORY", "batches", "make_images", "static_share"]

OUT_OF_MEMORY = "out of GPU memory"  # how an image that does not fit even alone is reported


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
    """Generate a batch; if it raises, free what it held, then retry its images one by one so only the bad fail.

    The retry runs here, after ``_attempt`` has returned, never inside its ``except`` block: there the
    exception's traceback would keep every frame of the failed call alive, and with them the batch's
    activations, which is exactly the memory a retry after an out-of-memory error needs.
    """
    rank, device = worker.rank, worker.device
    start = time.perf_counter()
    outcome = _attempt(worker, batch, call, outbox, should_stop)
    if isinstance(outcome, _Failure):
        free_memory(device)
        if len(batch) > 1 and outcome.retry:
            for job in batch:
                _run_and_send(worker, [job], call, outbox, should_stop)
            return
        for job in batch:
            outbox.send(ImageFailed(job.index, rank, device, outcome.error, outcome.traceback))
        return
    seconds = (time.perf_counter() - start) / len(batch)
    for job, made in zip(batch, outcome, strict=True):
        if made.image is None:
            outbox.send(ImageFailed(job.index, rank, device, made.error or "no image", ""))
        else:
            outbox.send_image(job, rank, device, seconds, made.image, made.note, made.skipped_steps)


@dataclass(frozen=True)
class _Failure:
    """A failed pipeline call kept as text: the exception itself would pin its traceback's frames."""

    error: str
    traceback: str
    retry: bool = True  # False: one image at a time would fail the same way (its decode already did)


def _attempt(
    worker: Any,
    batch: list[ImageJob],
    call: CallSettings,
    outbox: Outbox,
    should_stop: Callable[[], bool] | None,
) -> list[Made] | _Failure:
    """One pipeline call for ``batch``: its images, or its failure with the exception already let go."""
    rank, indices = worker.rank, tuple(job.index for job in batch)

    def on_step(step: int, total: int) -> None:
        outbox.send(StepProgress(rank, indices, step, total))

    try:
        if batch[0].params or call.scheduler is not None:
            worker.use_scheduler(batch[0].settings.get("scheduler", call.scheduler))
        worker.use_loras(active_loras(call.loras, batch[0].settings), call.fuse_lora)
        preview = worker.previews.hook(worker.pipe, worker.rank, batch, call, outbox.send)
        speed = before_call(worker, batch, call, outbox.send)  # --cache switched, --compile done (step_speed.py)
        return after_call(worker, speed, run_batch(worker.pipe, batch, call, on_step, should_stop, preview))
    except RunCancelled:
        raise
    except Exception as exc:
        failure = _Failure(_describe(exc, len(batch)), traceback.format_exc(), not getattr(exc, IN_DECODE, False))
        let_go(exc)
        return failure  # leaving the block unbinds ``exc``: nothing refers to the failed call's frames now


def _describe(exc: Exception, batch_size: int) -> str:
    """The error line; out of memory for a single image gets the flags that make it fit."""
    import torch

    # torch.cuda's name for torch.OutOfMemoryError (top-level only since torch 2.5); no CUDA call is made
    if isinstance(exc, torch.cuda.OutOfMemoryError) and (batch_size == 1 or getattr(exc, IN_DECODE, False)):
        asked = re.search(r"Tried to allocate ([\d.]+ \w+)", str(exc))
        tried = f" (tried to allocate {asked.group(1)})" if asked else ""
        if getattr(exc, IN_DECODE, False):  # even one image at a time (decode_retry.py)
            return f"{OUT_OF_MEMORY} in the VAE decode{tried}: add --vae-tiling, or lower --height/--width"
        return (
            f"{OUT_OF_MEMORY}{tried}: lower --batch-size or --height/--width, or add --offload model or --quantize nf4"
        )
    return f"{type(exc).__name__}: {exc}"
