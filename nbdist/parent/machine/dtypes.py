"""The default weights dtype per pipeline family and device, chosen without touching CUDA.

On GPUs the transformer families (Flux, SD3, PixArt, Sana) overflow in float16 and decode to black
squares, so they get bfloat16, but only where every GPU the workers use computes it natively (compute
capability 8.0 and up: a T4 or V100 does not); the UNet families keep float16. The capability comes
from ``nvidia-smi`` (``gpus.query_gpus``: ``CUDA_VISIBLE_DEVICES`` honoured), never from ``torch.cuda``
(which would initialise CUDA in the kernel and break every later fork); when it cannot be known (no
nvidia-smi, one too old) the note says so. On the CPU everything is float32.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .gpus import GpuQuery, query_gpus

__all__ = ["BF16_FAMILIES", "bfloat16_support", "default_dtype", "family_of"]

BF16_FAMILIES = ("Flux", "StableDiffusion3", "PixArt", "Sana")


def family_of(model_or_pipe: Any) -> str | None:
    """The pipeline class name: of the object, from a folder's ``model_index.json``, or None if unknown."""
    if not isinstance(model_or_pipe, str | os.PathLike):
        return type(model_or_pipe).__name__
    index = os.path.join(os.path.expanduser(os.fspath(model_or_pipe)), "model_index.json")
    try:
        with open(index, encoding="utf-8") as f:
            return str(json.load(f).get("_class_name"))
    except (OSError, ValueError):
        pass
    name = os.fspath(model_or_pipe).lower()  # a hub id: its name usually says
    for hint, cls in (("flux", "FluxPipeline"), ("stable-diffusion-3", "StableDiffusion3Pipeline")):
        if hint in name:
            return cls
    for hint, cls in (("pixart", "PixArtSigmaPipeline"), ("sana", "SanaPipeline")):
        if hint in name:
            return cls
    return None


def bfloat16_support(gpus: GpuQuery) -> tuple[bool | None, str]:
    """Whether every GPU in ``gpus`` computes bfloat16 natively (True, False, None: cannot tell), and why not.

    "Cannot tell" is kept apart from "no": on a T4 float16 is the only fast choice, while an old
    driver hides the capability of GPUs that may well have bfloat16, and the note must say which.
    """
    if not gpus.gpus:
        return None, gpus.problem or "nvidia-smi listed no GPU, so their compute capability is unknown"
    if any(g.compute_cap is None for g in gpus.gpus):
        return None, gpus.problem or "nvidia-smi did not report compute capability"
    for gpu in gpus.gpus:
        if gpu.compute_cap is not None and gpu.compute_cap < 8.0:
            return False, f"GPU {gpu.index}, {gpu.name}, compute capability {gpu.compute_cap:g}, lacks bfloat16"
    return True, ""


def default_dtype(device_type: str, family: str | None, gpus: GpuQuery | None = None) -> tuple[str, str | None]:
    """(dtype, a note to show or None) for a run without ``--dtype``: the one rule of every path.

    The notebook, ``--device-map`` and the CLI under a launcher all call this, so a model gets the same
    dtype however it is run. ``gpus`` are the GPUs the workers will use (None: every visible one).
    """
    if device_type != "cuda":
        return "float32", None
    if family is None or not family.startswith(BF16_FAMILIES):
        return "float16", None
    support, why = bfloat16_support(gpus if gpus is not None else query_gpus())
    short = family.removesuffix("Pipeline")
    if support:
        return "bfloat16", None
    if support is False:
        return "float16", f"nbdist: {short} in float16 ({why}); if images come out black, use --dtype float32"
    return "float16", f"nbdist: {why}: {short} in float16; pass --dtype bfloat16 if your GPUs support it"
