"""The interface between the collector and whatever shows or stores a run (gallery, disk, terminal)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ...jobs import ImageJob
from ...messages import Message
from ...options import GenerateOptions

__all__ = ["RunInfo", "RunObserver"]


@dataclass(frozen=True)
class RunInfo:
    """What every observer knows before the first message."""

    jobs: list[ImageJob]
    options: GenerateOptions
    model: str
    seed: int
    num_processes: int
    device_type: str
    height: int
    width: int
    call: Any = None  # CallSettings: effective steps, guidance, ... and where each came from
    started: float | None = None  # time.monotonic() when generate() was called: totals count the kernel's load too

    def setting(self, name: str) -> Any:
        """The effective value of ``steps``, ``guidance``, ``negative``, ``scheduler`` (else the option)."""
        if self.call is not None and name in self.call.effective:
            return self.call.effective[name]
        return getattr(self.options, name, None)

    @property
    def steps(self) -> int:
        """Denoising steps every image gets (progress totals)."""
        return int(self.setting("steps") or 1)


class RunObserver(Protocol):
    """Called from one thread only (the collector), in message order."""

    def on_start(self, run: RunInfo) -> None: ...
    def on_message(self, msg: Message) -> None: ...
    def on_end(self, result: Any) -> None: ...
