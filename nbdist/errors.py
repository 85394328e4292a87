"""The one error type for bad input, on its own so every module can raise it without import circles."""

from __future__ import annotations

__all__ = ["NbdistUsageError"]


class NbdistUsageError(ValueError):
    """Bad input, found before anything started. The magic shows it as an IPython ``UsageError``."""
