"""``index.html`` for a folder of generated PNGs: the static gallery, its thumbnails inline, linking the files.

Written once the run is over (under torchrun: once every rank, on every node, is done), from the
manifest entries of this run, so it shows each image once, in prompt order, and says which ones
failed or were never made.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...jobs import ImageJob
from .static_html import StaticTile, data_uri, render_gallery

__all__ = ["write_index", "write_result_index"]


def _tiles(
    entries: Iterable[Mapping[str, Any]],
    failures: Mapping[int, str],
    jobs: Iterable[ImageJob],
    thumbnails: Mapping[int, bytes],
) -> list[StaticTile]:
    by_index = {int(e["index"]): e for e in entries}
    tiles = []
    for job in jobs:
        entry = by_index.get(job.index)
        caption = f"#{job.index} {job.prompt}"
        title = f"{job.prompt} (seed {job.seed})"
        if entry is not None:
            thumb = thumbnails.get(job.index)
            src = data_uri(thumb) if thumb else entry["file"]
            tiles.append(StaticTile(src=src, href=entry["file"], caption=caption, title=title))
        else:
            error = failures.get(job.index, "not generated")
            tiles.append(StaticTile(src=None, caption=caption, title=title, error=error))
    return tiles


def write_index(
    folder: str | Path,
    jobs: Iterable[ImageJob],
    entries: Iterable[Mapping[str, Any]],
    *,
    failures: Mapping[int, str] | None = None,
    heading: str = "",
    thumbnails: Mapping[int, bytes] | None = None,
) -> Path:
    """Write ``folder/index.html`` (atomically) and return its path.

    ``entries`` are manifest records (``index`` and ``file`` at least); ``failures`` maps an image
    index to its error. Every job gets a tile: its image, or why there is none. An image with a
    thumbnail shows it inline (``data:``), linking its PNG: the page then shows its images even where
    the files next to it cannot be fetched (JupyterLab's sandboxed HTML viewer); one without links it.
    """
    path = Path(folder) / "index.html"
    body = render_gallery(_tiles(entries, failures or {}, jobs, thumbnails or {}), heading)
    title = html.escape(heading or "nbdist")
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title></head>\n<body>\n{body}\n</body></html>\n"
    )
    tmp = path.with_name(f".index.html.{os.getpid()}.part")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def write_result_index(folder: str | Path, result: Any, thumbnails: Mapping[int, bytes] | None = None) -> Path:
    """``index.html`` for a finished run's ``GenerationResult``: every job, its image or why there is none."""
    entries = [{"index": r.index, "file": r.path.name} for r in result.records if r.ok and r.path is not None]
    failures = {r.index: r.error for r in result.records if r.error is not None}
    made = [ImageJob(r.index, r.prompt_index, r.prompt, r.seed) for r in result.records]
    jobs = sorted([*result.missing, *made], key=lambda j: j.index)
    heading = f"{result.model}: {result.summary()}"
    return write_index(folder, jobs, entries, failures=failures, heading=heading, thumbnails=thumbnails)
