"""Plain diffusers calls on the demo model at its own settings: the references nbdist's images must equal."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def demo_pipe() -> Any:
    """The demo model loaded with ``StableDiffusionPipeline.from_pretrained``, as a user would, once."""
    from diffusers import StableDiffusionPipeline

    from nbdist.demo import demo_model

    pipe = StableDiffusionPipeline.from_pretrained(demo_model())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_call(pipe: Any, prompt: str, **kwargs: Any) -> np.ndarray:
    """``pipe(prompt, **kwargs)`` at the demo's steps and guidance: the image as 0-255 floats."""
    from nbdist.demo import demo_settings

    settings = demo_settings()
    steps, guidance = int(settings["steps"]), float(settings["guidance"])
    out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="np", **kwargs)
    return np.round(out.images[0] * 255)
