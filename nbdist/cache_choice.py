"""``--cache fbc[=THRESHOLD]|taylorseer|off``: which of diffusers' own step caches the denoiser runs with.

Parsed once, the same for the magic, the CLI, ``generate()`` and a ``--sweep cache=...`` axis, so a bad
value is one line before any process starts. diffusers does the caching (``CacheMixin.enable_cache``
with ``FirstBlockCacheConfig`` or ``TaylorSeerCacheConfig``); only DiT denoisers that mix it in have
it (Flux among the families here), so a UNet model is refused rather than silently run uncached.
Imports neither torch nor diffusers at parse time: shared by the kernel and the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import NbdistUsageError

__all__ = ["CACHE_KINDS", "DEFAULT_FBC_THRESHOLD", "CacheChoice", "check_cache", "parse_cache"]

CACHE_KINDS = ("fbc", "taylorseer", "off")
DEFAULT_FBC_THRESHOLD = 0.05  # diffusers' FirstBlockCacheConfig default


@dataclass(frozen=True)
class CacheChoice:
    """A parsed ``--cache`` value: the kind and, for ``fbc``, its threshold."""

    kind: str
    threshold: float | None = None

    @property
    def label(self) -> str:
        """How the choice reads in captions and metadata: ``fbc=0.1``, ``taylorseer``."""
        return f"{self.kind}={self.threshold:g}" if self.threshold is not None else self.kind


def parse_cache(value: Any) -> CacheChoice | None:
    """``"fbc=0.1"``, ``"fbc"``, a bare threshold (``0.1``: fbc, for sweeps), ``"taylorseer"``; None for off."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _fbc(str(value), value)
    text = str(value).strip().lower()
    kind, sep, raw = text.partition("=")
    if text in ("off", "none", ""):
        return None
    if kind == "taylorseer" and not sep:
        return CacheChoice("taylorseer")
    if kind == "fbc":
        return _fbc(text, raw if sep else DEFAULT_FBC_THRESHOLD)
    try:
        return _fbc(text, float(text))
    except ValueError:
        raise NbdistUsageError(
            f"unknown --cache {value!r}; choose fbc[=THRESHOLD] (e.g. fbc=0.1), taylorseer or off"
        ) from None


def _fbc(text: str, raw: Any) -> CacheChoice:
    try:
        threshold = float(raw)
    except (TypeError, ValueError):
        raise NbdistUsageError(f"--cache {text}: the threshold must be a number, e.g. fbc=0.1") from None
    if not threshold >= 0 or threshold == float("inf"):
        raise NbdistUsageError(f"--cache {text}: the threshold must be a finite number >= 0")
    return CacheChoice("fbc", threshold)


def check_cache(pipe: Any, values: list[Any]) -> None:
    """Every cache a run may use must be one this pipeline's denoiser has (``CacheMixin.enable_cache``)."""
    wanted = [choice for choice in map(parse_cache, values) if choice is not None]
    if not wanted or pipe is None:
        return
    denoiser = getattr(pipe, "transformer", None)
    if denoiser is None or not callable(getattr(denoiser, "enable_cache", None)):
        what = type(getattr(pipe, "unet", denoiser)).__name__ if denoiser is None else type(denoiser).__name__
        raise NbdistUsageError(
            f"--cache {wanted[0].label}: {type(pipe).__name__}'s denoiser ({what}) has no diffusers step cache "
            "(DiT models such as Flux have one); leave --cache out"
        )
