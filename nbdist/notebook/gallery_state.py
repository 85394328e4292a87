"""What the gallery shows, computed from worker messages: no widgets here, so it is tested in plain pytest.

The collector feeds every message to ``GalleryState.apply``; the widget layer asks, at its own pace,
which tiles changed (``take_dirty``) and what the header says (``header``). Keeping the two apart is
what lets a run of hundreds of images send one coalesced update per tick instead of one per message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..messages import (
    ImageFailed,
    ImageReady,
    Message,
    StepPreview,
    StepProgress,
    WorkerActivity,
    WorkerFinished,
    WorkerStarted,
)
from ..parent.output.grid import value_text
from ..parent.output.static_html import image_detail
from ..parent.results.observer import RunInfo

__all__ = ["GalleryState", "HeaderView", "TileState", "WorkerState", "format_seconds"]

TileStatus = Literal["queued", "running", "done", "failed", "stopped", "missing"]
WorkerStatus = Literal["starting", "running", "done", "failed", "stopped"]


def format_seconds(seconds: float) -> str:
    """``7.3 s``, ``2 min 05 s``, ``1 h 02 min``: short enough for a header line."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class TileState:
    """One image slot, in prompt order."""

    index: int
    prompt: str
    seed: int
    status: TileStatus = "queued"
    rank: int | None = None
    device: str = ""
    seconds: float | None = None
    step: int = 0
    total: int = 0
    thumbnail: bytes = b""
    error: str = ""
    params: str = ""  # a sweep's values for this image, e.g. "guidance=4 · steps=3"
    steps: int = 0  # denoising steps it will take (a swept value or the run's), for progress before it starts
    preview: bytes = b""  # the latest live preview (JPEG, ~96 px) while it denoises; dropped once it is done

    @property
    def label(self) -> str:
        """The status line under the picture."""
        if self.status == "queued":
            return "queued"
        if self.status == "running":
            return f"step {self.step}/{self.total} · worker {self.rank}"
        if self.status == "failed":
            return f"failed: {self.error}"
        if self.status == "stopped":
            return "not generated (stopped)"
        if self.status == "missing":
            return "not generated"
        return ""

    @property
    def meta(self) -> str:
        """The caption's second line: index, seed, worker and device, seconds."""
        return image_detail(
            self.index, self.seed, self.rank, self.device, self.seconds, device_format=" · {}", params=self.params
        )


@dataclass
class WorkerState:
    """One worker's line in the header."""

    rank: int
    status: WorkerStatus = "starting"
    device: str = ""
    node: str | None = None  # the Ray node of a --cluster actor
    planned: int = -1  # -1: dynamic schedule, not known in advance
    done: int = 0
    current: tuple[int, ...] = ()
    step: int = 0
    total: int = 0
    error: str = ""
    activity: str = ""  # what it does before its next step besides denoising (--compile: "compiling …")


@dataclass(frozen=True)
class HeaderView:
    """The header as the widget shows it: a title, a stats line, a progress fraction, worker lines."""

    title: str
    stats: str
    fraction: float
    workers: tuple[str, ...]
    finished: bool = False

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for the widget trait."""
        return {
            "title": self.title,
            "stats": self.stats,
            "fraction": self.fraction,
            "workers": list(self.workers),
            "finished": self.finished,
        }


@dataclass
class GalleryState:
    """Everything the gallery draws, updated message by message (from the collector thread only)."""

    run: RunInfo
    clock: Callable[[], float] = time.monotonic
    tiles: list[TileState] = field(init=False)
    workers: dict[int, WorkerState] = field(init=False)
    started: float = field(init=False)
    first_progress: float | None = field(init=False, default=None)
    summary: str | None = field(init=False, default=None)
    queued_behind: int = field(init=False, default=0)  # runs ahead of this one on the warm workers
    phase: str | None = field(init=False, default=None)  # e.g. "starting 2 workers": said until a worker reports
    _dirty: set[int] = field(init=False, default_factory=set)
    _by_index: dict[int, TileState] = field(init=False)
    _steps_text: str = field(init=False)

    def __post_init__(self) -> None:
        self.tiles = [
            TileState(
                job.index,
                job.prompt,
                job.seed,
                params=value_text(job.settings),
                steps=int(job.settings.get("steps", self.run.steps)),
            )
            for job in self.run.jobs
        ]
        self._by_index = {t.index: t for t in self.tiles}
        steps = sorted({t.steps for t in self.tiles}) or [self.run.steps]  # once per run, not per header
        self._steps_text = f"{steps[0]} steps" if len(steps) == 1 else f"{steps[0]}–{steps[-1]} steps"
        self.workers = {rank: WorkerState(rank) for rank in range(self.run.num_processes)}
        # From the generate() call (the cell's start) when known: the kernel's imports and load are part of the wait.
        called = self.run.started
        self.started = called if called is not None and self.clock is time.monotonic else self.clock()

    # -- messages ---------------------------------------------------------------------------------

    def apply(self, msg: Message) -> None:
        """Fold one worker message into the state."""
        if self.queued_behind:  # the workers took this run: it waits no more
            self.queued_behind = 0
            self.started = self.clock()
        if isinstance(msg, StepProgress):
            self._on_step(msg)
        elif isinstance(msg, StepPreview):
            self._on_preview(msg)
        elif isinstance(msg, ImageReady):
            tile = self._by_index[msg.index]
            tile.status, tile.rank, tile.device, tile.seconds = "done", msg.rank, msg.device, msg.seconds
            tile.thumbnail, tile.preview = msg.thumbnail, b""
            if msg.note:  # e.g. blanked by the safety checker: the tile says so next to its details
                tile.params = f"{tile.params} · {msg.note}" if tile.params else msg.note
            tile.step = tile.total = tile.total or tile.steps
            self._finished_image(msg.rank, msg.index)
            self._dirty.add(msg.index)
        elif isinstance(msg, ImageFailed):
            tile = self._by_index[msg.index]
            tile.status, tile.rank, tile.device, tile.error = "failed", msg.rank, msg.device, msg.error
            self._finished_image(msg.rank, msg.index)
            self._dirty.add(msg.index)
        elif isinstance(msg, WorkerStarted):
            worker = self._worker(msg.rank)
            worker.status, worker.device, worker.planned = "running", msg.device, msg.num_jobs
            worker.node = msg.node
            if self.first_progress is None:
                self.first_progress = self.clock()
        elif isinstance(msg, WorkerActivity):
            self._worker(msg.rank).activity = msg.text
        elif isinstance(msg, WorkerFinished):
            worker = self._worker(msg.rank)
            worker.status = "failed" if msg.error else "done"
            worker.error = msg.error or ""
            worker.current = ()

    def _worker(self, rank: int) -> WorkerState:
        return self.workers.setdefault(rank, WorkerState(rank))

    def _finished_image(self, rank: int, index: int) -> None:
        worker = self._worker(rank)
        worker.done += 1
        worker.activity = ""
        worker.status = "running" if worker.status == "starting" else worker.status
        worker.current = tuple(i for i in worker.current if i != index)

    def _on_step(self, msg: StepProgress) -> None:
        worker = self._worker(msg.rank)
        worker.status = "running" if worker.status == "starting" else worker.status
        worker.current, worker.step, worker.total = msg.indices, msg.step, msg.total
        worker.activity = ""  # a step done: the compile that came before it is over
        if self.first_progress is None:
            self.first_progress = self.clock()
        for index in msg.indices:
            tile = self._by_index[index]
            if tile.status in ("done", "failed"):
                continue
            tile.status, tile.rank, tile.step, tile.total = "running", msg.rank, msg.step, msg.total
            self._dirty.add(index)

    def _on_preview(self, msg: StepPreview) -> None:
        """The tile shows the image forming; a preview that arrives after the image itself is ignored."""
        tile = self._by_index[msg.index]
        if tile.status in ("done", "failed"):
            return
        tile.preview, tile.status, tile.rank = msg.jpeg, "running", msg.rank
        tile.step, tile.total = max(tile.step, msg.step), msg.total
        self._dirty.add(msg.index)

    def finish(self, summary: str, stopped: bool = False) -> None:
        """The run is over: no tile is "queued" or "running" any more, no worker "loading".

        An unfinished tile says it was not generated, and why when the run was stopped (Stop, an
        interrupt, ``cancel()``), so a tile never claims to wait for work that will not come. A worker
        that had not finished its share when the run was stopped says "stopped", not "done". Its live
        preview goes too: the picture of an image that never came is noise under "not generated".
        """
        self.summary = summary
        self.queued_behind = 0
        for tile in self.tiles:
            if tile.status in ("queued", "running"):
                tile.status, tile.step, tile.preview = ("stopped" if stopped else "missing"), 0, b""
                self._dirty.add(tile.index)
        for worker in self.workers.values():
            worker.current = ()
            if worker.status == "failed":
                continue
            share_done = worker.status == "done" and 0 <= worker.planned <= worker.done
            if stopped and not share_done:
                worker.status = "stopped"
            elif worker.status in ("starting", "running"):
                worker.status = "done"

    def take_dirty(self) -> list[TileState]:
        """Tiles changed since the last call, in prompt order (the widget sends only these)."""
        dirty = sorted(self._dirty)
        self._dirty.clear()
        return [self._by_index[i] for i in dirty]

    # -- numbers ------------------------------------------------------------------------------------

    @property
    def done(self) -> int:
        return sum(1 for t in self.tiles if t.status == "done")

    @property
    def failed(self) -> int:
        return sum(1 for t in self.tiles if t.status == "failed")

    @property
    def steps_total(self) -> int:
        return sum(t.total or t.steps for t in self.tiles)

    @property
    def steps_done(self) -> int:
        """Denoising steps finished across all workers (a failed image counts as fully stepped)."""
        return sum(
            (t.total or t.steps) if t.status in ("done", "failed") else t.step
            for t in self.tiles
            if t.status in ("running", "done", "failed")
        )

    def elapsed(self) -> float:
        return self.clock() - self.started

    def images_per_second(self) -> float | None:
        """Images per second since the first worker was ready: the rate of the run, not of the load before it."""
        since = self.clock() - (self.first_progress if self.first_progress is not None else self.started)
        return self.done / since if self.done and since > 0 else None

    def eta(self) -> float | None:
        """Seconds left, from the denoising rate since the first worker was ready (loading excluded)."""
        if self.first_progress is None:
            return None
        steps_done, since = self.steps_done, self.clock() - self.first_progress
        if steps_done <= 0 or since <= 0:
            return None
        return (self.steps_total - steps_done) / (steps_done / since)

    def header(self) -> HeaderView:
        """The header lines for the current moment."""
        run = self.run
        title = (
            f"{len(self.tiles)} images · {run.num_processes} worker(s) on {run.device_type} · "
            f"{self._steps_text} · seed {run.seed} · {run.model}"
        )
        total = len(self.tiles)
        fraction = self.steps_done / self.steps_total if self.steps_total else 1.0
        if self.summary is not None:
            stats = self.summary
        elif self.queued_behind:
            stats = f"queued: waiting for {self.queued_behind} run(s) before it on the warm workers"
        elif self.phase is not None and self.first_progress is None:
            stats = f"{self.phase} · elapsed {format_seconds(self.elapsed())}"
        else:
            parts = [f"{self.done}/{total} images", f"steps {self.steps_done}/{self.steps_total}"]
            if self.failed:
                parts.append(f"{self.failed} failed")
            rate = self.images_per_second()
            if rate is not None:
                parts.append(f"{rate:.2f} img/s")
            parts.append(f"elapsed {format_seconds(self.elapsed())}")
            eta = self.eta()
            parts.append("ETA " + (format_seconds(eta) if eta is not None else "…"))
            stats = " · ".join(parts)
        return HeaderView(
            title=title,
            stats=stats,
            fraction=max(0.0, min(1.0, fraction)),
            workers=tuple(self._worker_line(w) for w in sorted(self.workers.values(), key=lambda w: w.rank)),
            finished=self.summary is not None,
        )

    def _worker_line(self, worker: WorkerState) -> str:
        where = f"worker {worker.rank}" + (f" · node {worker.node[:8]}" if worker.node else "")
        where += f" · {worker.device}" if worker.device else ""
        count = f"{worker.done}/{worker.planned} images" if worker.planned >= 0 else f"{worker.done} images"
        if self.queued_behind and worker.status == "starting":  # busy with the runs before this one
            return f"{where} · waiting"
        if worker.status == "starting":
            return f"{where} · loading the pipeline…"
        if worker.status == "failed":
            return f"{where} · failed: {worker.error}"
        if worker.status == "stopped":
            return f"{where} · {count} · stopped"
        if worker.activity:
            return f"{where} · {count} · {worker.activity}…"
        if worker.status == "done" or not worker.current:
            return f"{where} · {count} · {'done' if worker.status == 'done' else 'waiting'}"
        first = self._by_index[worker.current[0]]
        prompt = first.prompt if len(first.prompt) <= 60 else first.prompt[:59] + "…"
        more = f" (+{len(worker.current) - 1})" if len(worker.current) > 1 else ""
        return f"{where} · {count} · “{prompt}”{more} · step {worker.step}/{worker.total}"
