"""Plain picklable messages from the workers to the parent.

Workers never draw widgets or touch the notebook: they put these on a fork-context queue, and one
collector thread in the parent turns them into results, files and gallery updates. A finished image
travels in one of three forms, chosen per run by the parent (``SaveTarget``): the path of the PNG the
worker wrote itself (forked workers share the kernel's disk: the kernel never touches the pixels), PNG
bytes the worker encoded (workers on other machines: the kernel only writes them), or raw pixels
(``--no-save``: the image stays in memory). Each comes with a small JPEG thumbnail for display, so the
browser never receives a full-size image it did not ask for.
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
    "SaveTarget",
    "StepPreview",
    "StepProgress",
    "WorkerActivity",
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
    bad_fork: bool = False  # torch's flag in this worker: forked after its parent spoiled CUDA for children


@dataclass(frozen=True)
class StepProgress:
    """Denoising progress of the images a worker is making right now (throttled by the worker)."""

    rank: int
    indices: tuple[int, ...]
    step: int
    total: int


@dataclass(frozen=True)
class SaveTarget:
    """Where a run's images go, decided by the parent and carried in each ``RunCommand``.

    ``folder`` set: the worker writes each PNG there itself (temporary name, then rename) and sends its
    path; only for workers that share the kernel's filesystem (forked workers always do). ``folder``
    None: the worker encodes the PNG and sends its bytes; the kernel writes them (workers on other
    machines, e.g. Ray actors). No ``SaveTarget`` at all (``--no-save``): raw pixels, kept in memory.
    ``params`` are the run's parameters for the PNG text chunk (``image_files.image_metadata``).
    """

    folder: str | None
    params: dict[str, Any]


@dataclass(frozen=True)
class ImageReady:
    """One finished image: a display-sized JPEG thumbnail plus the image as ``path``, ``png`` or ``pixels``.

    Exactly one of the three is set (see ``SaveTarget``); ``mode`` and ``size`` describe the image.
    """

    index: int
    rank: int
    device: str
    seconds: float
    mode: str
    size: tuple[int, int]
    pixels: bytes | None
    thumbnail: bytes
    note: str | None = None  # e.g. blanked by the safety checker
    path: str | None = None  # the complete PNG the worker wrote
    png: bytes | None = None  # the PNG the worker encoded, for the kernel to write
    skipped_steps: int | None = None  # --cache: denoising steps the step cache skipped (None: no cache)

    def to_pil(self):  # noqa: ANN201 - PIL.Image.Image, imported lazily
        """The full-size image: rebuilt from raw pixels without decoding, else decoded from the PNG."""
        import io

        from PIL import Image

        if self.pixels is not None:
            return Image.frombytes(self.mode, self.size, self.pixels)
        with Image.open(io.BytesIO(self.png) if self.png is not None else str(self.path)) as image:
            image.load()
            return image


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
    save: SaveTarget | None = None  # None: send raw pixels (--no-save)


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


# -- appended: what a worker does besides denoising (--compile) ----------------------------------------


@dataclass(frozen=True)
class WorkerActivity:
    """A worker is busy with something other than denoising before its next step (``compiling``).

    Sent before the pipeline call that compiles (torch compiles lazily, inside it), so the header's worker
    line says why the first step is slow; the next ``StepProgress`` ends it.
    """

    rank: int
    text: str


Message = Message | WorkerActivity  # type: ignore[misc]
