"""``--init``: the image-to-image form of the worker's own pipeline, made per batch from the same components.

``AutoPipelineForImage2Image.from_pipe`` builds the img2img pipeline around the modules already on
this worker's device (under a millisecond, no new weights), so a refine runs in the warm workers and
sees the scheduler and LoRAs the batch asked for. The call is the plain diffusers one:
``(prompt, image=init, strength=s, generator=...)``, with the run's other settings where it takes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..call_settings import call_parameters
from ..jobs import ImageJob

__all__ = ["img2img_call", "init_image"]


def init_image(call: Any, job: ImageJob) -> Any:
    """The image ``job`` starts from: the run's one init, or its prompt's; ``--upscale`` resizes it first."""
    from PIL import Image

    paths = (call.init,) if isinstance(call.init, str) else tuple(call.init)
    with Image.open(paths[job.prompt_index] if len(paths) > 1 else paths[0]) as opened:
        image = opened.convert("RGB")
    if call.upscale:
        size = (round(image.width * call.upscale), round(image.height * call.upscale))
        image = image.resize(size, Image.LANCZOS)  # the hires-fix pass: denoised again at the larger size
    return image


def img2img_call(
    pipe: Any, jobs: Sequence[ImageJob], call: Any, kwargs: dict[str, Any], steps: int
) -> tuple[Any, dict[str, Any], int]:
    """(the img2img pipeline, its call arguments, the denoising steps it really runs)."""
    from diffusers import AutoPipelineForImage2Image

    target = AutoPipelineForImage2Image.from_pipe(pipe)
    target.set_progress_bar_config(disable=True)
    accepted = call_parameters(target) or {}
    kwargs = {name: value for name, value in kwargs.items() if name in accepted}  # no height/width: the init's
    kwargs["image"] = [init_image(call, job) for job in jobs]
    strength = call.strength if call.strength is not None else accepted["strength"].default
    if call.strength is not None:
        kwargs["strength"] = call.strength
    return target, kwargs, max(1, min(int(steps * strength), steps))  # diffusers' init_timestep
