"""The default weights dtype per pipeline family and device, chosen without touching CUDA.

On GPUs the transformer families (Flux, SD3, PixArt, Sana) overflow in float16 and decode to black
squares, so they get bfloat16, but only where every visible GPU computes it natively (compute
capability 8.0 and up: a T4 or V100 does not); the UNet families keep float16. The capability comes
from ``nvidia-smi``, never from ``torch.cuda`` (which would initialise CUDA in the kernel and break
every later fork). On the CPU everything is float32.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import lru_cache
from typing import Any

__all__ = ["BF16_FAMILIES", "default_dtype", "family_of", "gpus_have_bfloat16"]

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


@lru_cache(maxsize=1)
def gpus_have_bfloat16() -> bool:
    """Every visible GPU has compute capability >= 8.0 (asked of nvidia-smi; False if it cannot say)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        ).stdout
        caps = [float(line) for line in out.split() if line.strip()]
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return bool(caps) and min(caps) >= 8.0


def default_dtype(device_type: str, family: str | None) -> tuple[str, str | None]:
    """(dtype, a note to show or None) for a run without ``--dtype``."""
    if device_type != "cuda":
        return "float32", None
    if family is not None and family.startswith(BF16_FAMILIES):
        if gpus_have_bfloat16():
            return "bfloat16", None
        return "float16", (
            f"nbdist: {family} in float16 (these GPUs lack bfloat16); if images come out black, use --dtype float32"
        )
    return "float16", None
