"""A batch's VAE decode that runs out of memory is retried one image at a time, from the same latents.

The decode of a batch is its largest allocation (``DECODE_WORKING`` in ``memory_fit.py``), and it comes
after every denoising step: failing the batch there and retrying its images one by one (``making.py``)
would denoise them all a second time. So while a pipeline call runs, its VAE's ``decode`` is wrapped:
an out-of-memory error lets go of the failed decode's memory, then decodes again with diffusers' own
slicing (``use_slicing``: one image per decode) from the latents the call already made. A decode that
does not fit even alone is marked, so the error line can name ``--vae-tiling``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .freeing import free_memory, let_go

__all__ = ["IN_DECODE", "retrying_decode"]

IN_DECODE = "nbdist_in_decode"  # set on an out-of-memory error raised by the VAE decode


@contextlib.contextmanager
def retrying_decode(pipe: Any) -> Iterator[None]:
    """For the duration, ``pipe.vae.decode`` retries a batch one image at a time after running out of memory."""
    vae = getattr(pipe, "vae", None)
    original = getattr(vae, "decode", None)
    if original is None or "decode" in vars(vae):  # no VAE, or already wrapped (a nested call)
        yield
        return
    vae.decode = _wrapped(vae, original)
    try:
        yield
    finally:
        del vae.decode


def _wrapped(vae: Any, original: Any) -> Any:
    import torch

    def decode(*args: Any, **kwargs: Any) -> Any:
        latents = args[0] if args else kwargs.get("z")
        sliced = bool(getattr(vae, "use_slicing", True)) or getattr(latents, "shape", (1,))[0] <= 1
        try:
            return original(*args, **kwargs)
        except torch.cuda.OutOfMemoryError as exc:  # torch.OutOfMemoryError; no CUDA call is made
            setattr(exc, IN_DECODE, True)
            if sliced:
                raise
            let_go(exc)
        free_memory(latents.device.type)  # out of the except block: the failed decode's frames are gone
        vae.use_slicing = True
        try:
            return original(*args, **kwargs)
        except torch.cuda.OutOfMemoryError as exc:
            setattr(exc, IN_DECODE, True)
            raise
        finally:
            vae.use_slicing = False

    return decode
