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

__all__ = ["RunCancelled", "StepReporter", "run_batch"]


class RunCancelled(Exception):
    """Raised from the step callback when the run was cancelled: the batch ends within one step.

    Why raise rather than set ``pipe._interrupt``: after ``_interrupt`` diffusers skips the remaining
    steps but still decodes the half-denoised latents, which costs a VAE decode and returns an image
    that looks finished and is not. Raising ends the call at once and nothing half-made can be sent.
    """


class StepReporter:
    """A ``callback_on_step_end`` that reports progress at most every ``interval`` seconds.

    Every step would be hundreds of messages a second on a fast GPU; the last step is always sent.
    ``should_stop`` is asked after every step (a shared-memory read): true ends the batch.
    """

    def __init__(
        self,
        send: Callable[[int, int], None],
        total: int,
        interval: float = 0.1,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self._send = send
        self._total = total
        self._interval = interval
        self._last = 0.0
        self._should_stop = should_stop

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._should_stop is not None and self._should_stop():
            raise RunCancelled
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
    should_stop: Callable[[], bool] | None = None,
) -> list[Any]:
    """Generate one image per job in a single pipeline call; returns PIL images in job order."""
    import torch

    kwargs = pipeline_kwargs(options)
    if options.negative is not None:
        kwargs["negative_prompt"] = [options.negative] * len(jobs)
    if on_step is not None or should_stop is not None:
        kwargs["callback_on_step_end"] = StepReporter(on_step or _ignore, options.steps, should_stop=should_stop)
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
    with torch.inference_mode():
        out = pipe(prompt=[job.prompt for job in jobs], generator=generators, **kwargs)
    return list(out.images)


def _ignore(step: int, total: int) -> None:
    """No progress reports wanted."""
