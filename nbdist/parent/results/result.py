"""The result of a run: image records in prompt order, kept even when the run stops early.

A record points at its PNG on disk (``path``) and loads the full-size image only when asked
(``record.image``, through a small cache): a run of thousands of images keeps the kernel's memory
flat. With ``--no-save`` the record holds the image itself, as there is no file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from ...jobs import ImageJob
from ...options import GenerateOptions

__all__ = ["GenerationResult", "ImageRecord", "RecordSequence", "WorkerFailure", "WorkerInfo", "load_image"]

IMAGE_CACHE = 16  # full-size images kept after loading: a viewer going back and forth, a grid of a sweep


@functools.lru_cache(maxsize=IMAGE_CACHE)
def load_image(path: str, stamp: tuple[int, int]) -> Any:
    """The PNG at ``path``, decoded (``stamp``: its size and mtime, so a replaced file is read again)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image


class _ImageOnDemand:
    """``ImageRecord.image``: the image the record holds, else its file loaded on demand, else None.

    A data descriptor on the class: ``ImageRecord(image=...)`` still works, and the value set is what the
    record holds (the generated ``__init__`` passes the descriptor itself as the default: nothing held).
    """

    def __get__(self, record: Any, owner: Any = None) -> Any:
        if record is None:
            return None  # the field's default
        held = record.__dict__.get("_held")
        if held is not None or record.path is None or record.error is not None:
            return held
        try:
            stat = Path(record.path).stat()
        except OSError:
            return None
        return load_image(str(record.path), (stat.st_size, stat.st_mtime_ns))

    def __set__(self, record: Any, value: Any) -> None:
        record.__dict__["_held"] = None if isinstance(value, _ImageOnDemand) else value


@dataclass
class ImageRecord:
    """One generated (or failed) image. ``image`` is the full-size PIL image (read from ``path`` when asked),
    ``None`` if it failed."""

    index: int
    prompt: str
    prompt_index: int
    seed: int
    image: Any = field(default=_ImageOnDemand(), repr=False, compare=False)
    rank: int | None = None
    device: str | None = None
    seconds: float | None = None
    error: str | None = None
    traceback: str | None = None
    path: Path | None = None
    note: str | None = None  # e.g. "blanked by the safety checker"
    skipped_steps: int | None = None  # --cache: denoising steps diffusers' step cache skipped (None: no cache)
    params: dict[str, Any] = field(default_factory=dict)  # this image's sweep values, e.g. {"guidance": 4.0}
    thumbnail: bytes | None = field(default=None, repr=False)  # the worker's JPEG preview (static gallery)
    node: str | None = None  # the Ray node that made it (--cluster); None on one machine

    @property
    def ok(self) -> bool:
        """True when the image was generated (checked without loading it)."""
        return self.error is None and (self.__dict__.get("_held") is not None or self.path is not None)

    # -- acting on this image (cell.py, actions.py) ---------------------------------------------------
    run: Any = field(default=None, repr=False, compare=False)  # the GenerationResult it belongs to

    @property
    def job(self) -> ImageJob:
        """The job this image was made from (its seed, its sweep values, which of its prompt's images)."""
        if self.run is None:
            raise ValueError("this record belongs to no finished run")
        return next(job for job in self.run.jobs if job.index == self.index)

    @property
    def cell(self) -> str:
        """The ``%%distgen`` cell that makes this image again, alone: model, settings, its seed, its prompt."""
        from .cell import image_cell, image_options, model_name

        job = self.job  # first: it says so when the record belongs to no run
        return image_cell(model_name(self.run.model), self.prompt, image_options(self.run.options, job))

    def vary(self, n: int = 8, strength: float = 0.2, seed: int | None = None, **options: Any) -> Any:
        """``n`` variations of this image on the same workers: its initial noise blended (slerp) with that
        of variation seeds ``seed .. seed+n-1`` at ``strength`` (0: this image itself). Returns their
        ``GenerationResult`` (with ``background=True`` a handle); other keywords are options."""
        from .actions import vary

        return vary(self, n, strength, seed, **options)

    def refine(self, prompt: str | None = None, strength: float = 0.4, **options: Any) -> Any:
        """Image-to-image from this image on the same workers (its seed and settings; ``prompt`` defaults to its
        own); ``strength`` is how much is redone, ``upscale=2`` a hires-fix pass. Returns the run's result."""
        from .actions import refine

        return refine(self, prompt, strength, **options)


@dataclass
class WorkerFailure:
    """A worker that failed as a whole (setup error, killed, out of memory)."""

    rank: int
    error: str
    traceback: str | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker ran: its rank, device, process id and thread count."""

    rank: int
    device: str
    pid: int
    threads: int
    device_map: dict[str, Any] | None = None  # where --device-map balanced put each component
    node: str | None = None  # the Ray node id of a --cluster actor; None on one machine
    bad_fork: bool = False  # CUDA unusable in this worker: forked after the kernel initialised or probed it


class RecordSequence(Sequence[ImageRecord]):
    """Indexing, iteration and ``images`` over ``records``: a finished result, or a run still going."""

    records: list[ImageRecord]

    @overload
    def __getitem__(self, i: int) -> ImageRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[ImageRecord]: ...
    def __getitem__(self, i: int | slice) -> ImageRecord | list[ImageRecord]:
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def images(self) -> list[Any]:
        """The generated PIL images, in prompt order (failed ones left out)."""
        return [r.image for r in self.records if r.ok]


@dataclass
class GenerationResult(RecordSequence):
    """Records of every image that finished or failed, in prompt order.

    ``missing`` lists the jobs that never finished (interrupted, or their worker died), so a partial
    run says exactly what it lacks; ``logs`` holds each worker's captured stdout/stderr.
    """

    records: list[ImageRecord]
    missing: list[ImageJob]
    options: GenerateOptions
    seed: int
    model: str
    num_processes: int
    seconds: float
    first_image_seconds: float | None = None
    interrupted: bool = False
    worker_failures: list[WorkerFailure] = field(default_factory=list)
    workers: dict[int, WorkerInfo] = field(default_factory=dict)
    logs: dict[int, str] = field(default_factory=dict)
    save_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # effective steps, guidance, size, negative, scheduler
    sources: dict[str, str] = field(default_factory=dict)  # where each came from: user, model file, table, class
    jobs: list[ImageJob] = field(default_factory=list, repr=False)  # every job of the run, for grids
    display_token: str | None = field(default=None, repr=False)  # pairs the notebook gallery with _repr_html_

    def __post_init__(self) -> None:
        for record in self.records:  # each record knows its run: res[i].cell, .vary(), .refine()
            record.run = self

    @property
    def device_map(self) -> dict[str, Any] | None:
        """``hf_device_map`` of a ``--device-map`` run (component -> GPU number or "cpu"), else None."""
        return next((w.device_map for w in self.workers.values() if w.device_map), None)

    @property
    def errors(self) -> list[ImageRecord]:
        """Records of images whose generation raised."""
        return [r for r in self.records if r.error is not None]

    @property
    def complete(self) -> bool:
        """Every image was generated."""
        return not self.missing and not self.errors and not self.interrupted

    def summary(self) -> str:
        """One line: what was made, how fast, and what went wrong."""
        done = sum(1 for r in self.records if r.ok)
        total = done + len(self.errors) + len(self.missing)
        parts = [
            f"{done} of {total} images in {self.seconds:.1f} s on {self.num_processes} worker(s), seed {self.seed}"
        ]
        if self.first_image_seconds is not None:
            parts.append(f"first after {self.first_image_seconds:.1f} s")
        if self.errors:
            parts.append(f"{len(self.errors)} failed")
        if self.missing:
            parts.append(f"{len(self.missing)} not generated")
        if self.interrupted:
            parts.append("interrupted")
        return ", ".join(parts)

    def grid(self) -> Any:
        """A sweep's labelled grid as one PIL image (a grid per value of the further axes, stacked); None otherwise."""
        from PIL import Image

        from ..output.grid import grid_image, layout

        grids = layout(self.jobs, self.options.sweep)
        if not grids:
            return None
        images = {r.index: r.image for r in self.records if r.ok}
        parts = [grid_image(g, images, cell=_cell_side(images)) for g in grids]
        canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), "white")
        top = 0
        for part in parts:
            canvas.paste(part, (0, top))
            top += part.height
        return canvas

    def __repr__(self) -> str:
        return f"<GenerationResult: {self.summary()}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str | None:
        """The static gallery (inline thumbnails): what a saved notebook or nbconvert shows."""
        from ..output.static_html import result_html
        from ..output.vscode import in_vscode

        if self.display_token is not None and in_vscode():  # VS Code shows both: its live gallery is the one
            return None

        return result_html(self)


def _cell_side(images: dict[int, Any]) -> int:
    """Grid cells at the images' own size, between 128 px (room for the labels) and 512 px."""
    sides = [max(image.size) for image in images.values()]
    return max(128, min(512, max(sides))) if sides else 256
