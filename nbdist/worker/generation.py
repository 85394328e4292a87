"""Run the diffusers pipeline on a batch of image jobs.

Each image gets its own ``torch.Generator("cpu").manual_seed(job.seed)``; a batch passes the list of
generators, which diffusers uses one per image, so batching changes float rounding and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from ..call_settings import CallSettings, call_parameters
from ..jobs import ImageJob
from ..sweep import job_call
from .decode_retry import retrying_decode
from .img2img import img2img_call
from .previews import PreviewHook
from .prompt_weights import needs_compel, prompt_embeddings
from .variations import blended_latents

__all__ = ["Made", "RunCancelled", "StepReporter", "run_batch", "step_callback", "to_images"]


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
        preview: Callable[[int, int, Any], None] | None = None,
    ) -> None:
        self._send = send
        self._total = total
        self._interval = interval
        self._last = 0.0
        self._should_stop = should_stop
        self._preview = preview  # given the latents after each step: it decides itself when to draw them

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._should_stop is not None and self._should_stop():
            raise RunCancelled
        now = time.monotonic()
        done = step + 1
        if self._preview is not None:
            self._preview(done, self._total, callback_kwargs.get("latents"))
        if done == self._total or now - self._last >= self._interval:
            self._last = now
            self._send(done, self._total)
        return callback_kwargs


NAN_ERROR = (
    "the decoded image is NaN (float16 overflow, shown by diffusers as a black square): "
    "try --dtype bfloat16 (GPUs with compute capability >= 8.0) or --dtype float32"
)
SAFETY_NOTE = "blanked by the safety checker (nsfw_content_detected)"


@dataclass(frozen=True)
class Made:
    """One image of a batch: the PIL image, or why there is none, and a note worth showing with it."""

    image: Any = None
    error: str | None = None
    note: str | None = None
    skipped_steps: int | None = None  # --cache: the steps diffusers' step cache skipped in this image's call


def run_batch(
    pipe: Any,
    jobs: Sequence[ImageJob],
    call: CallSettings,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    preview: Callable[[int, int, Any], None] | None = None,
) -> list[Made]:
    """Generate one image per job in a single pipeline call; returns them in job order.

    The pipeline returns its tensor (``output_type="pt"``), converted to uint8 on the device exactly as
    diffusers' PIL output rounds (``to_images``), so a NaN image (float16 overflow) can be told apart from
    a black one and only uint8 pixels cross to the host.
    """
    import torch

    kwargs, negative, _, steps = job_call(call, jobs[0].settings)  # a batch shares its sweep values
    target = pipe
    if getattr(call, "init", None):  # --init: the image-to-image form of the same pipeline
        target, kwargs, steps = img2img_call(pipe, jobs, call, kwargs, steps)
    if negative is not None:
        kwargs["negative_prompt"] = [negative] * len(jobs)
    if on_step is not None or should_stop is not None or preview is not None:
        reporter = StepReporter(on_step or _ignore, steps, should_stop=should_stop, preview=preview)
        kwargs.update(step_callback(target, reporter))
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
    size = (kwargs.get("height") or call.effective.get("height"), kwargs.get("width") or call.effective.get("width"))
    latents = blended_latents(pipe, jobs, call, generators, size)  # --variation-seed: the blended initial noise
    if latents is not None:
        kwargs["latents"] = latents
    prompts = [job.prompt for job in jobs]
    with torch.inference_mode():
        text: dict[str, Any] = {"prompt": prompts}
        if needs_compel(pipe, prompts, negative, call.prompt_syntax):  # (word:1.3) or past 77 tokens
            kwargs.pop("negative_prompt", None)
            text = prompt_embeddings(pipe, prompts, negative)
        scheduler = getattr(target, "scheduler", None)
        clean = preview.watching(scheduler) if isinstance(preview, PreviewHook) else nullcontext()
        with clean, retrying_decode(target):  # a decode out of memory: again one image at a time, no second denoise
            out = target(generator=generators, output_type="pt", **text, **kwargs)
    return to_images(out, len(jobs))


def step_callback(pipe: Any, reporter: StepReporter) -> dict[str, Any]:
    """The call arguments that make ``pipe`` call ``reporter`` after every denoising step.

    ``callback_on_step_end`` where the pipeline has it; the older ``callback``/``callback_steps`` where it
    has only those. PixArt-Σ is one: its ``__call__`` also takes ``**kwargs``, so a
    ``callback_on_step_end`` would be swallowed without effect (no progress, and no Stop).
    """
    params = call_parameters(pipe) or {}  # down the MRO past wrappers that take **kwargs
    if "callback_on_step_end" in params:
        return {"callback_on_step_end": reporter}
    if "callback" in params:

        def old_style(step: int, timestep: Any, latents: Any) -> None:
            reporter(pipe, step, timestep, {"latents": latents})

        return {"callback": old_style, **({"callback_steps": 1} if "callback_steps" in params else {})}
    return {}


def to_images(out: Any, count: int) -> list[Made]:
    """The pipeline's images as PIL images, rounded as diffusers' ``numpy_to_pil``; NaN and blanked ones marked.

    A tensor (``output_type="pt"``, NCHW in [0, 1]) becomes uint8 where it is, on the GPU: one
    ``(x * 255).round()`` in float32 and a quarter of the bytes to copy, instead of a float copy on the
    host. A pipeline that ignored ``output_type`` and returned arrays or PIL images still works.
    """
    import numpy as np

    flagged = getattr(out, "nsfw_content_detected", None) or [False] * count
    pixels, nan = _uint8_pixels(out.images)
    made = []
    for array, bad, nsfw in zip(pixels, nan, flagged, strict=True):
        if bad:
            made.append(Made(error=NAN_ERROR))
            continue
        image = array if hasattr(array, "mode") else _pil(np.asarray(array))
        made.append(Made(image, note=SAFETY_NOTE if nsfw else None))
    return made


def _uint8_pixels(images: Any) -> tuple[list[Any], list[bool]]:
    """Per image: uint8 HWC pixels (or the PIL image as given), and whether it was NaN."""
    import numpy as np
    import torch

    if isinstance(images, torch.Tensor):
        x = images.float()
        nan = torch.isnan(x).flatten(1).any(1).tolist()
        pixels = (x.nan_to_num(0.0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return list(pixels), nan
    if isinstance(images, list) and images and hasattr(images[0], "mode"):
        return list(images), [False] * len(images)
    arrays = np.asarray(images)
    nan = [bool(np.isnan(a).any()) for a in arrays]
    return [(np.nan_to_num(a) * 255).round().astype("uint8") for a in arrays], nan


def _pil(array: Any) -> Any:
    """A uint8 HWC array as a PIL image (one channel: greyscale, as ``numpy_to_pil``)."""
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _ignore(step: int, total: int) -> None:
    """No progress reports wanted."""
