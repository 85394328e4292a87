"""Which pipelines can make variations: checked in the kernel, before any worker starts.

A variation hands the pipeline its initial noise (``latents=``) in the shape its ``prepare_latents``
draws: one image's ``(1, channels, height / scale, width / scale)``. Pipelines that pack latents into
tokens (Flux) or draw them some other way would take such a tensor and fail mid-run, or worse, not fail.
"""

from __future__ import annotations

from typing import Any

from ...call_settings import call_parameters
from ...options import GenerateOptions, NbdistUsageError

__all__ = ["check_variations"]


def check_variations(pipe: Any, options: GenerateOptions) -> None:
    """A ``NbdistUsageError`` when the run asks for variations this pipeline cannot make."""
    if options.variation_seed is None and "variation_seed" not in options.sweep:
        return
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    in_channels = getattr(getattr(denoiser, "config", None), "in_channels", None)
    takes = "latents" in (call_parameters(pipe) or {})
    if not takes or in_channels is None or hasattr(pipe, "_pack_latents") or not hasattr(pipe, "vae_scale_factor"):
        raise NbdistUsageError(
            f"--variation-seed: {type(pipe).__name__} does not take its initial noise as (1, C, H, W) latents; "
            "variations work with the SD 1.x, SDXL, SD3, PixArt and Sana pipelines"
        )
