"""Run the diffusers pipeline on a batch of image jobs.

Each image gets its own ``torch.Generator("cpu").manual_seed(job.seed)``; a batch passes the list of
generators, which diffusers uses one per image, so batching changes float rounding and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..jobs import ImageJob
from ..options import GenerateOptions

__all__ = ["StepReporter", "run_batch"]


class StepReporter:
    """A ``callback_on_step_end`` that reports progress at most every ``interval`` seconds.

    Every step would be hundreds of messages a second on a fast GPU; the last step is always sent.
    """

    def __init__(self, send: Callable[[int, int], None], total: int, interval: float = 0.1) -> None:
        self._send = send
        self._total = total
        self._interval = interval
        self._last = 0.0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        done = step + 1
        if done == self._total or now - self._last >= self._interval:
            self._last = now
            self._send(done, self._total)
        return callback_kwargs


def pipeline_kwargs(options: GenerateOptions) -> dict[str, Any]:
    """The call arguments shared by every image of a run."""
    kwargs: dict[str, Any] = {
        "num_inference_steps": options.steps,
        "guidance_scale": options.guidance,
    }
    if options.height is not None:
        kwargs["height"] = options.height
    if options.width is not None:
        kwargs["width"] = options.width
    kwargs.update(options.extra)
    return kwargs


def run_batch(
    pipe: Any,
    jobs: Sequence[ImageJob],
    options: GenerateOptions,
    on_step: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Generate one image per job in a single pipeline call; returns PIL images in job order."""
    import torch

    kwargs = pipeline_kwargs(options)
    if options.negative is not None:
        kwargs["negative_prompt"] = [options.negative] * len(jobs)
    if on_step is not None:
        kwargs["callback_on_step_end"] = StepReporter(on_step, options.steps)
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
    with torch.inference_mode():
        out = pipe(prompt=[job.prompt for job in jobs], generator=generators, **kwargs)
    return list(out.images)
