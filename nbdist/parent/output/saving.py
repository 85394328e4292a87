"""Write each image to disk as it arrives: a PNG with its parameters, and a JSON-lines manifest.

Writing happens on a background thread of its own so a slow disk or PNG compression never delays the
gallery. The parameters sit in the PNG text chunk (readable by PIL, exiftool and most image tools),
so a file alone is enough to reproduce its image.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...jobs import ImageJob
from ...messages import ImageReady, Message
from ...sweep import value_label
from ..results.observer import RunInfo

__all__ = ["DiskWriter", "file_name", "image_metadata", "png_text", "run_parameters", "slug"]


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe ASCII slug: no slashes, dots-only names or control characters, ever."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "image"


def file_name(job: ImageJob) -> str:
    """``00012-an-astronaut-riding-a-horse.png``: the index keeps prompt order and uniqueness."""
    return f"{job.index:05d}-{slug(job.prompt)}.png"


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


def image_metadata(
    params: dict[str, Any],
    job: ImageJob,
    *,
    size: tuple[int, int],
    rank: int | None,
    device: str | None,
    seconds: float | None,
    note: str | None = None,
) -> dict[str, Any]:
    """One image's parameters: the run's, its own (prompt, seed, swept values) and where it was made.

    One function for the saved PNGs, ``manifest.jsonl`` and the gallery's "Download PNG", so a file
    from either place carries the same text chunk.
    """
    width, height = size
    swept = {k: v for k, v in job.settings.items() if k not in ("size", "seed")}
    return {
        "index": job.index,
        "prompt": job.prompt,
        "seed": job.seed,
        **params,
        **swept,
        **({"sweep": {k: value_label(k, v) for k, v in job.params}} if job.params else {}),
        "height": height,
        "width": width,
        "rank": rank,
        "device": device,
        "seconds": None if seconds is None else round(seconds, 4),
        **({"note": note} if note else {}),
    }


def png_text(meta: dict[str, Any]) -> Any:
    """The PNG text chunk for ``meta``: a tEXt per common key (what image tools show) and the JSON whole."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key in ("prompt", "negative", "seed", "steps", "guidance", "scheduler", "width", "height", "model"):
        if meta.get(key) is not None:
            info.add_text(key, str(meta[key]))
    info.add_itxt("nbdist", json.dumps(meta, ensure_ascii=False))
    return info


class DiskWriter:
    """A run observer that saves PNGs and appends to ``manifest.jsonl`` in ``folder``."""

    def __init__(self, folder: str | Path, manifest: str = "manifest.jsonl") -> None:
        self.folder = Path(folder)
        self.manifest = self.folder / manifest  # the CLI under torchrun gives each rank its own, merged at the end
        self.paths: dict[int, Path] = {}
        self._jobs: dict[int, ImageJob] = {}
        self._params: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbdist-save")
        self._pending: list[Future[None]] = []
        self._manifest_lock = threading.Lock()

    def on_start(self, run: RunInfo) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if run.options.overwrite:  # --overwrite: the earlier run goes now, never mixed with this one
            from .previous_run import clear_previous_run

            clear_previous_run(self.folder)
        self._jobs = {job.index: job for job in run.jobs}
        self._params = run_parameters(run)

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, ImageReady):
            job = self._jobs[msg.index]
            path = self.folder / file_name(job)
            self.paths[msg.index] = path
            self._pending.append(self._executor.submit(self._write, msg, job, path))

    def on_end(self, result: Any) -> None:
        """Wait for every pending write (a run is not over until its files are on disk); a sweep's grids too."""
        for fut in self._pending:
            fut.result()
        self._executor.shutdown(wait=True)
        self._write_grids(result)

    def _write_grids(self, result: Any) -> None:
        """``grid.png`` next to the PNGs (one per value of the further axes: ``grid-steps-2.png``)."""
        if result is None or not getattr(result.options, "sweep", None):  # None: a torchrun rank's share
            return
        from .grid import grid_image, layout

        grids = layout(result.jobs, result.options.sweep)
        images = {r.index: r.image for r in result.records if r.image is not None}
        for grid in grids:
            name = "grid.png" if len(grids) == 1 else f"grid-{slug(grid.heading)}.png"
            grid_image(grid, images).save(self.folder / name)

    def _write(self, msg: ImageReady, job: ImageJob, path: Path) -> None:
        meta = image_metadata(
            self._params, job, size=msg.size, rank=msg.rank, device=msg.device, seconds=msg.seconds, note=msg.note
        )
        tmp = path.with_suffix(".png.part")
        msg.to_pil().save(tmp, format="PNG", pnginfo=png_text(meta), compress_level=4)
        tmp.replace(path)  # a file under its final name is always complete
        line = json.dumps({**meta, "file": path.name}, ensure_ascii=False)
        with self._manifest_lock, open(self.manifest, "a", encoding="utf-8") as f:
            f.write(line + "\n")
