"""The function every worker process runs: set up, take a share of the jobs, stream images back.

The same function serves every launcher: ``notebook_launcher`` (fork, the pipeline inherited from the
kernel), and ``torchrun`` / ``accelerate launch`` (the process loads the model itself). It learns its
rank and world size from the environment those launchers set, through accelerate's ``PartialState``.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterator
from typing import Any

from ..jobs import ImageJob
from ..messages import ImageFailed, StepProgress, WorkerFinished, WorkerStarted
from ..spec import RunSpec
from .generation import run_batch
from .outbox import Outbox
from .quiet import redirect_output, silence_libraries

__all__ = ["run_worker"]


def _partial_state(device_type: str) -> Any:
    """A fresh ``PartialState`` for this process.

    ``PartialState`` is a process-wide singleton; one created in the parent before the fork would be
    inherited and make every worker believe it is the only process, so it is reset first. On the CPU
    ``cpu=True`` is essential: without it accelerate does not set up the gloo group and every worker
    silently takes all the prompts.
    """
    from accelerate import PartialState

    PartialState._reset_state()
    return PartialState(cpu=device_type == "cpu")


def _my_jobs(state: Any, spec: RunSpec) -> Iterator[list[ImageJob]]:
    """Batches of this worker's jobs, static split or dynamic pull, never padded nor duplicated."""
    size = spec.options.batch_size
    if spec.next_job is None:
        with state.split_between_processes(spec.jobs) as share:
            share = list(share)
        for start in range(0, len(share), size):
            yield share[start : start + size]
        return
    while True:
        with spec.next_job.get_lock():
            start = spec.next_job.value
            spec.next_job.value = min(start + size, len(spec.jobs))
        if start >= len(spec.jobs):
            return
        yield spec.jobs[start : start + size]


def _load(spec: RunSpec) -> Any:
    """The pipeline: inherited through fork, or loaded here when started by torchrun/accelerate."""
    if spec.pipeline is not None:
        return spec.pipeline
    from ..pipelines import load_pipeline
    from ..placement import normalise_max_memory

    return load_pipeline(
        spec.model or "",
        spec.dtype,
        allow_pickle=spec.options.allow_pickle,
        device_map=spec.options.device_map,
        max_memory=normalise_max_memory(spec.options.max_memory),
    )


def _place(pipe: Any, spec: RunSpec, device: str) -> str:
    """Put the pipeline where this worker runs it; returns the device to report.

    A pipeline this worker loaded with ``--device-map balanced`` is already spread over the GPUs and
    stays so. A device-mapped pipeline handed over from the parent (e.g. loaded there with
    ``device_map="cpu"``) carries accelerate hooks that would fight ``.to()``; diffusers requires
    ``reset_device_map()`` first, which removes them (in this worker's copy only).
    """
    if spec.options.device_map is not None:
        placed = sorted({str(d) for d in _as_dict(pipe.hf_device_map).values()})
        return f"{spec.options.device_map}:{'+'.join(placed)}"
    if getattr(pipe, "hf_device_map", None):
        pipe.reset_device_map()
    pipe.to(device)
    return device


def _device_map(pipe: Any, spec: RunSpec) -> dict[str, Any] | None:
    """The ``hf_device_map`` of a ``--device-map`` run, as plain picklable values for the parent."""
    if spec.options.device_map is None or not getattr(pipe, "hf_device_map", None):
        return None
    return {str(k): v if isinstance(v, int | str) else str(v) for k, v in _as_dict(pipe.hf_device_map).items()}


def _as_dict(device_map: Any) -> dict[str, Any]:
    """diffusers keeps a dict per component for "balanced", but just the string for ``device_map="cpu"``."""
    return dict(device_map) if isinstance(device_map, dict) else {"pipeline": device_map} if device_map else {}


def run_worker(spec: RunSpec) -> None:
    """Entry point of one worker process."""
    import torch

    rank = int(os.environ.get("RANK", "0"))
    redirect_output(os.path.join(spec.log_dir, f"worker-{rank}.log"))
    silence_libraries()
    torch.set_num_threads(spec.threads_per_worker)
    outbox = Outbox(spec.queue, spec.options.thumbnail_size)
    try:
        state = _partial_state(spec.device_type)
        torch.set_num_threads(spec.threads_per_worker)  # accelerate's multi-CPU setup resets it to cores // n
        rank = state.process_index
        device = "cpu" if state.device.type == "cpu" else str(state.device)  # accelerate may say "cpu:0"
        pipe = _load(spec)
        device = _place(pipe, spec, device)
        pipe.set_progress_bar_config(disable=True)
        batches = list(_my_jobs(state, spec)) if spec.next_job is None else None
        planned = sum(len(b) for b in batches) if batches is not None else -1
        threads = torch.get_num_threads()
        outbox.send(WorkerStarted(rank, device, os.getpid(), planned, threads, device_map=_device_map(pipe, spec)))
        for batch in batches if batches is not None else _my_jobs(state, spec):
            _run_and_send(pipe, batch, spec, outbox, rank, device)
        outbox.send(WorkerFinished(rank))
    except Exception as exc:  # a setup failure: report it instead of taking the other workers down
        outbox.send(WorkerFinished(rank, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()))
    finally:
        outbox.close()


def _run_and_send(pipe: Any, batch: list[ImageJob], spec: RunSpec, outbox: Outbox, rank: int, device: str) -> None:
    """Generate a batch; if it raises, retry its images one by one so only the bad ones fail."""
    indices = tuple(job.index for job in batch)

    def on_step(step: int, total: int) -> None:
        outbox.send(StepProgress(rank, indices, step, total))

    start = time.perf_counter()
    try:
        images = run_batch(pipe, batch, spec.options, on_step)
    except Exception as exc:
        if len(batch) > 1:
            for job in batch:
                _run_and_send(pipe, [job], spec, outbox, rank, device)
            return
        outbox.send(ImageFailed(batch[0].index, rank, device, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    seconds = (time.perf_counter() - start) / len(batch)
    for job, image in zip(batch, images, strict=True):
        outbox.send_image(job.index, rank, device, seconds, image)
