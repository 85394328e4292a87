"""``--preview auto|taesd[=PATH]|off``: how the workers show an image while it denoises, parsed once.

Shared by the kernel (checked before any process starts) and the workers (which act on it), so the
spelling rules live in one place. Imports neither torch nor IPython.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import NbdistUsageError

__all__ = ["PREVIEW_MODES", "PreviewChoice", "parse_preview"]

PREVIEW_MODES = ("auto", "taesd", "off")


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
