"""``--preview auto|taesd[=PATH]|off``: how the workers show an image while it denoises, parsed once.

Shared by the kernel (checked before any process starts) and the workers (which act on it), so the
spelling rules live in one place. Imports neither torch nor IPython.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import NbdistUsageError

__all__ = ["PREVIEW_MODES", "PreviewChoice", "check_preview", "parse_preview", "published_taesd", "vae_family_key"]

PREVIEW_MODES = ("auto", "taesd", "off")
FAMILY_VAE_BLOCKS = (128, 256, 512, 512)  # the SD, SDXL, SD3 and Flux VAEs; a tiny or trained-here one differs
# (latent channels, VAE scaling factor) -> the published tiny autoencoder for those latents
TAESD_IDS = {
    (4, 0.18215): "madebyollin/taesd",
    (4, 0.13025): "madebyollin/taesdxl",
    (16, 1.5305): "madebyollin/taesd3",
    (16, 0.3611): "madebyollin/taef1",
}


@dataclass(frozen=True)
class PreviewChoice:
    """``mode`` is auto (a linear latent->RGB map), taesd (a tiny autoencoder) or off; ``source`` the TAESD."""

    mode: str
    source: str | None = None  # a folder or hub id of an AutoencoderTiny; None: the family's own


def parse_preview(text: str | None) -> PreviewChoice:
    """``"auto"``, ``"off"``, ``"taesd"``, ``"taesd=PATH_OR_ID"``; anything else is a one-line usage error.

    A TAESD given as a path (it starts with ``.``, ``/`` or ``~``) must exist now, not when the first
    step of the first image wants it.
    """
    value = (text or "auto").strip()
    mode, sep, source = value.partition("=")
    if mode not in PREVIEW_MODES or (sep and (mode != "taesd" or not source.strip())):
        raise NbdistUsageError(f"--preview {value!r}: choose auto, off, taesd or taesd=PATH_OR_HUB_ID")
    source = source.strip() or None
    if source is not None and source.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(source)):
        raise NbdistUsageError(f"--preview taesd={source}: no such folder")
    return PreviewChoice(mode, source)


def vae_family_key(vae: Any) -> tuple[int, float] | None:
    """(latent channels, scaling factor) of a VAE shaped like the published families', else None."""
    config = vae.config
    if tuple(getattr(config, "block_out_channels", ()) or ()) != FAMILY_VAE_BLOCKS:
        return None
    return int(config.latent_channels), round(float(getattr(config, "scaling_factor", 1.0) or 1.0), 5)


def published_taesd(vae: Any) -> str | None:
    """The hub id of the TAESD made for this VAE's latents, or None (a VAE of no published family)."""
    key = vae_family_key(vae)
    return TAESD_IDS.get(key) if key is not None else None


def check_preview(pipe: Any, text: str | None) -> None:
    """``--preview taesd`` without a PATH needs a family with a published TAESD: said before anything starts."""
    choice = parse_preview(text)
    vae = getattr(pipe, "vae", None)
    if choice.mode == "taesd" and choice.source is None and vae is not None and published_taesd(vae) is None:
        raise NbdistUsageError(
            f"--preview taesd: no published TAESD for {type(pipe).__name__}'s VAE; "
            "give one with --preview taesd=PATH_OR_HUB_ID, or use --preview auto"
        )
