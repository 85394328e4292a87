"""A model's call defaults read from its config files, for runs where the kernel loads no pipeline.

With ``--quantize``, ``--device-map`` or ``--cluster MODEL_ID`` the workers load the model and the
kernel holds none, yet the kernel must still know the size and step count of every image (progress
"k/28", Stop's answer time, the PNG's and manifest's record, the Flux previews' unpacking). They come
from the files ``from_pretrained`` reads anyway: ``model_index.json`` names the pipeline class (its
``__call__`` defaults), the denoiser's ``sample_size`` and the VAE's depth give the image side, the
scheduler's config its class. No weights are read, no network is used (a hub id counts only once its
snapshot is in the local cache).

Used in the kernel and in processes started by ``torchrun``; imports neither IPython nor CUDA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FALLBACK_SAMPLE_SIZE", "ModelFiles", "model_files"]

# The latent side diffusers' pipelines fall back to when the denoiser's config has no ``sample_size``
# (FluxPipeline sets ``default_sample_size = 128``; SDXL, SD3 and others use it as their fallback).
FALLBACK_SAMPLE_SIZE = 128
_DENOISERS = ("transformer", "unet", "prior", "decoder")


class ModelFiles:
    """The config files of one pipeline folder (a local folder or a hub snapshot)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index = self._json("model_index.json")

    def _json(self, *parts: str) -> dict[str, Any]:
        try:
            data = json.loads(self.folder.joinpath(*parts).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def pipeline_class(self) -> type | None:
        """The diffusers pipeline class ``from_pretrained`` would build (``_class_name``), if diffusers has it."""
        name = self.index.get("_class_name")
        if not isinstance(name, str):
            return None
        import diffusers

        cls = getattr(diffusers, name, None)
        return cls if isinstance(cls, type) else None

    def vae_scale_factor(self) -> int | None:
        """``2 ** (levels - 1)`` of the VAE, as the pipelines compute it; None without its config."""
        vae = self._json("vae", "config.json")
        levels = vae.get("block_out_channels") or vae.get("encoder_block_out_channels")
        return 2 ** (len(levels) - 1) if isinstance(levels, list) and levels else None

    def default_size(self) -> tuple[int | None, int | None]:
        """(height, width) a call without them makes: the denoiser's sample size x the VAE scale factor.

        Unknown (None) when a config is missing (a hub snapshot holding only ``model_index.json``):
        a guess there would record a wrong size on every image.
        """
        denoiser = next((self._json(name, "config.json") for name in _DENOISERS if name in self.index), {})
        scale = self.vae_scale_factor()
        if not denoiser or scale is None:
            return None, None
        side = denoiser.get("sample_size")
        if isinstance(side, list | tuple):
            side = side[0] if side else None
        if not isinstance(side, int) or side <= 0:
            side = FALLBACK_SAMPLE_SIZE
        return side * scale, side * scale

    def scheduler_class(self) -> str | None:
        """The scheduler's class name, from its config."""
        name = self._json("scheduler", "scheduler_config.json").get("_class_name")
        return name if isinstance(name, str) else None


def model_files(model: str | None, revision: str | None = None) -> ModelFiles | None:
    """The config files of ``model``: its folder, or a hub id's snapshot in the local cache; else None."""
    if not model:
        return None
    folder = Path(os.path.expanduser(model))
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "model_index.json", revision=revision)
        except Exception:  # not a hub id, or an unreadable cache: the defaults stay unknown
            return None
        if not isinstance(found, str):
            return None
        folder = Path(found).parent
    files = ModelFiles(folder)
    return files if files.index else None
