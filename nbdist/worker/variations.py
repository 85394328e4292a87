"""Variations (A1111's "variation seed"): an image's initial noise blended with another seed's, passed as ``latents=``.

The image's own noise is drawn exactly as diffusers draws it (``torch.randn`` of one image's latent
shape from its own CPU generator, in the denoiser's dtype), then spherically interpolated towards the
noise of its variation seed. The pipeline gets the blend as ``latents=`` and the same generators, now
advanced past that draw as they would be had the pipeline drawn it: strength 0 is the original image
exactly, ancestral schedulers included, and every image still depends on its own job only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..jobs import ImageJob, variation_of

__all__ = ["blended_latents", "slerp"]


def slerp(strength: float, low: Any, high: Any) -> Any:
    """Spherical interpolation from ``low`` (strength 0) to ``high`` (strength 1), over the whole tensor.

    Why spherical: two independent Gaussian noises are nearly orthogonal, and a straight blend of them
    has a smaller norm than either (a washed-out image); along the arc the norm stays a noise's norm.
    """
    import torch

    a, b = low.double().flatten(), high.double().flatten()
    cos = torch.clamp(torch.dot(a, b) / (a.norm() * b.norm()), -1.0, 1.0)
    omega = torch.acos(cos)
    if float(torch.sin(omega)) < 1e-6:  # (anti)parallel: nothing to turn around
        out = (1 - strength) * a + strength * b
    else:
        out = (torch.sin((1 - strength) * omega) * a + torch.sin(strength * omega) * b) / torch.sin(omega)
    return out.reshape(low.shape).to(low.dtype)


def blended_latents(pipe: Any, jobs: Sequence[ImageJob], call: Any, generators: Sequence[Any], size: Any) -> Any:
    """The batch's initial latents when any of its images is a variation, else None (the pipeline draws them).

    ``size`` is (height, width) in pixels. Draws from ``generators`` (one per job), as the pipeline would.
    """
    variations = [variation_of(job, call) for job in jobs]
    if all(v is None for v in variations):
        return None
    import torch

    shape, dtype = _latent_shape(pipe, size)
    out = []
    for generator, variation in zip(generators, variations, strict=True):
        noise = torch.randn(shape, generator=generator, dtype=dtype)
        if variation is not None:
            seed, strength = variation
            other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)
            noise = noise if strength == 0 else slerp(strength, noise, other)
        out.append(noise)
    return torch.cat(out)


def _latent_shape(pipe: Any, size: Any) -> tuple[tuple[int, ...], Any]:
    """One image's latent shape and dtype, as the pipeline's own ``prepare_latents`` makes them."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    height, width = size
    scale = int(pipe.vae_scale_factor)
    return (1, int(denoiser.config.in_channels), int(height) // scale, int(width) // scale), denoiser.dtype
