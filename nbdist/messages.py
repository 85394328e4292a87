"""Plain picklable messages from the workers to the parent.

Workers never draw widgets or touch the notebook: they put these on a fork-context queue, and one
collector thread in the parent turns them into results, files and gallery updates. Pixels travel as
raw bytes (the full image, rebuilt in the parent) plus a small JPEG thumbnail for display, so nothing
heavy is encoded twice and the browser never receives a full-size image it did not ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "Command",
    "ImageFailed",
    "ImageReady",
    "Message",
    "RunCommand",
    "RunFinished",
    "RunStarted",
    "StepPreview",
    "StepProgress",
    "WorkerFinished",
    "WorkerStarted",
]


@dataclass(frozen=True)
class WorkerStarted:
    """A worker is ready: its pipeline is on its device and it knows its share of the jobs."""

    rank: int
    device: str
    pid: int
    num_jobs: int
    threads: int
    device_map: dict[str, Any] | None = None  # hf_device_map of a --device-map run
    node: str | None = None  # the Ray node id of a --cluster actor; None on one machine


@dataclass(frozen=True)
class StepProgress:
    """Denoising progress of the images a worker is making right now (throttled by the worker)."""

    rank: int
    indices: tuple[int, ...]
    step: int
    total: int


@dataclass(frozen=True)
class ImageReady:
    """One finished image: full pixels as raw bytes, plus a display-sized JPEG thumbnail."""

    index: int
    rank: int
    device: str
    seconds: float
    mode: str
    size: tuple[int, int]
    pixels: bytes
    thumbnail: bytes
    note: str | None = None  # e.g. blanked by the safety checker

    def to_pil(self):  # noqa: ANN201 - PIL.Image.Image, imported lazily
        """The full-size image, rebuilt without any decoding."""
        from PIL import Image

        return Image.frombytes(self.mode, self.size, self.pixels)


@dataclass(frozen=True)
class ImageFailed:
    """An image whose generation raised; the worker goes on with its next images."""

    index: int
    rank: int
    device: str
    error: str
    traceback: str


@dataclass(frozen=True)
class WorkerFinished:
    """The last message of a worker: ``error`` is set when the worker itself failed (not one image)."""

    rank: int
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class RunStarted:
    """A pool worker took run ``run``: ``num_jobs`` of its images are this worker's (-1: pulled one by one)."""

    rank: int
    run: int
    num_jobs: int


@dataclass(frozen=True)
class RunFinished:
    """A pool worker is done with run ``run``: every image it made was sent before this message.

    ``cancelled``: it stopped early because the run was cancelled (the image it was making is dropped,
    never sent half-denoised). ``error``: the run failed in this worker as a whole (not one image).
    """

    rank: int
    run: int
    cancelled: bool = False
    error: str | None = None
    traceback: str | None = None


Message = WorkerStarted | StepProgress | ImageReady | ImageFailed | WorkerFinished | RunStarted | RunFinished


# -- parent to worker (a pool worker's inbox) ------------------------------------------------------


@dataclass(frozen=True)
class RunCommand:
    """Make these images: every worker gets the same command and takes its own share.

    ``options`` is a ``GenerateOptions``; the jobs are ``ImageJob``s, numbered by the parent.
    """

    run: int
    jobs: tuple[Any, ...]
    options: Any
    call: Any  # a CallSettings: the call arguments every image gets


Command = RunCommand | None  # None: stop serving and exit


# -- appended: live previews (--preview) -----------------------------------------------------------


@dataclass(frozen=True)
class StepPreview:
    """An image while it denoises: a small JPEG (~96 px) of its latents after ``step`` of ``total`` steps.

    Made by the worker's cheap latent->RGB map (or TAESD) every few steps; the gallery shows the latest
    in the image's tile until the finished image replaces it, and ``on_preview`` gets every one.
    """

    index: int
    rank: int
    step: int
    total: int
    jpeg: bytes

    def to_pil(self):  # noqa: ANN201 - PIL.Image.Image, imported lazily
        """The preview as a PIL image."""
        import io

        from PIL import Image

        return Image.open(io.BytesIO(self.jpeg))


Message = Message | StepPreview  # type: ignore[misc]  # appended here so the union above stays as it was
