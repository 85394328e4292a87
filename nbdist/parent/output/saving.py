"""Write each image to disk as it arrives: a PNG with its parameters, and a JSON-lines manifest.

Forked workers write their PNGs themselves (``worker/outbox.py``) and send only the path; this writer
then only appends the manifest line, at once, before the gallery shows the tile: a kernel killed
mid-run leaves every image it showed complete on disk and listed. PNG bytes from workers on other
machines are written here as they arrive (no encoding); raw pixels (the CLI under ``torchrun``) are
encoded on a background thread so PNG compression never delays the gallery. The parameters sit in the
PNG text chunk (readable by PIL, exiftool and most image tools), so a file alone is enough to
reproduce its image.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...image_files import encode_png, file_name, image_metadata, png_text, slug, write_atomically
from ...jobs import ImageJob
from ...messages import ImageReady, Message
from ..results.observer import RunInfo
from .thumbnail_spool import ThumbnailSpool

__all__ = ["DiskWriter", "file_name", "image_metadata", "png_text", "run_parameters", "slug"]


def run_parameters(run: RunInfo) -> dict[str, Any]:
    """The parameters every image of a run shares (model, effective settings, where each came from)."""
    return {
        "model": run.model,
        "negative": run.setting("negative"),
        "steps": run.setting("steps"),
        "guidance": run.setting("guidance"),
        "scheduler": run.setting("scheduler"),
        "height": run.height,
        "width": run.width,
        **({"params": run.options.params} if run.options.params else {}),
        **({"sources": run.call.sources} if run.call is not None else {}),
    }


class DiskWriter:
    """A run observer that saves PNGs and appends to ``manifest.jsonl`` in ``folder``.

    It comes before the other observers, so an image's manifest line is written before its tile shows.
    """

    def __init__(self, folder: str | Path, manifest: str = "manifest.jsonl") -> None:
        self.folder = Path(folder)
        self.manifest = self.folder / manifest  # the CLI under torchrun gives each rank its own, merged at the end
        self.paths: dict[int, Path] = {}
        self._jobs: dict[int, ImageJob] = {}
        self._params: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbdist-save")
        self._pending: list[Future[None]] = []
        self._manifest_lock = threading.Lock()
        self._thumbnails = ThumbnailSpool(self.folder)  # for index.html, inlined (see thumbnail_spool.py)

    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters, as every PNG's text chunk carries them (known from ``on_start``)."""
        return self._params

    def on_start(self, run: RunInfo) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if run.options.overwrite:  # --overwrite: the earlier run goes now, never mixed with this one
            from .previous_run import clear_previous_run

            clear_previous_run(self.folder)
        self._jobs = {job.index: job for job in run.jobs}
        self._params = run_parameters(run)

    def on_message(self, msg: Message) -> None:
        if not isinstance(msg, ImageReady):
            return
        job = self._jobs[msg.index]
        path = Path(msg.path) if msg.path is not None else self.folder / file_name(job)
        self.paths[msg.index] = path
        self._thumbnails.add(msg.index, msg.thumbnail)
        if msg.pixels is not None:  # raw pixels: encoding is slow, off this thread
            self._pending.append(self._executor.submit(self._write, msg, job, path))
            return
        if msg.png is not None:
            write_atomically(path, msg.png)
        self._append(self._meta(msg, job), path)

    def on_end(self, result: Any) -> None:
        """Wait for every pending write (a run is not over until its files are on disk); a sweep's grids and
        ``index.html`` too (``result`` None: a torchrun rank's share, whose launcher writes the index)."""
        for fut in self._pending:
            fut.result()
        self._executor.shutdown(wait=True)
        self._write_grids(result)
        if result is not None:
            from .index_page import write_result_index

            write_result_index(self.folder, result, thumbnails=self._thumbnails.read())
        self._thumbnails.discard()

    def _write_grids(self, result: Any) -> None:
        """``grid.png`` next to the PNGs (one per value of the further axes: ``grid-steps-2.png``)."""
        if result is None or not getattr(result.options, "sweep", None):  # None: a torchrun rank's share
            return
        from .grid import grid_image, layout

        grids = layout(result.jobs, result.options.sweep)
        images = {r.index: r.image for r in result.records if r.ok}
        for grid in grids:
            name = "grid.png" if len(grids) == 1 else f"grid-{slug(grid.heading)}.png"
            grid_image(grid, images).save(self.folder / name)

    def _meta(self, msg: ImageReady, job: ImageJob) -> dict[str, Any]:
        return image_metadata(
            self._params,
            job,
            size=msg.size,
            rank=msg.rank,
            device=msg.device,
            seconds=msg.seconds,
            note=msg.note,
            skipped=msg.skipped_steps,
        )

    def _write(self, msg: ImageReady, job: ImageJob, path: Path) -> None:
        meta = self._meta(msg, job)
        write_atomically(path, encode_png(msg.to_pil(), meta))
        self._append(meta, path)

    def _append(self, meta: dict[str, Any], path: Path) -> None:
        """One manifest line, written and closed at once: readable whatever happens to this process next."""
        line = json.dumps({**meta, "file": path.name}, ensure_ascii=False)
        with self._manifest_lock, open(self.manifest, "a", encoding="utf-8") as f:
            f.write(line + "\n")
