"""``nbdist.generate(..., on_preview=fn)``: every preview a worker makes, handed to a function in the kernel.

An observer like the gallery: it runs on the thread that reads the workers' messages, in their order,
so ``fn`` sees image ``i``'s previews step by step and before its finished image reaches the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...messages import Message, StepPreview
from .observer import RunInfo

__all__ = ["PreviewCallback", "wants_previews"]

PreviewFunction = Callable[[int, int, Any], object]  # (image index, step, small PIL image)


class PreviewCallback:
    """Calls ``fn(index, step, image)`` for every ``StepPreview``; ``image`` is a PIL image of ~96 px."""

    wants_previews = True

    def __init__(self, fn: PreviewFunction) -> None:
        if not callable(fn):
            from ...errors import NbdistUsageError

            raise NbdistUsageError(f"on_preview must be a function (index, step, image), got {type(fn).__name__}")
        self._fn = fn

    def on_start(self, run: RunInfo) -> None:
        pass

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, StepPreview):
            self._fn(msg.index, msg.step, msg.to_pil())

    def on_end(self, result: Any) -> None:
        pass


def wants_previews(observers: Sequence[object]) -> bool:
    """True if an observer shows or takes previews: without one the workers are told to make none."""
    return any(getattr(observer, "wants_previews", False) for observer in observers)
