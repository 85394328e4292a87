"""``nbdist.open_run(folder)``: a runs folder back into a ``GenerationResult``, gallery and all.

Yesterday's run, in a new kernel: its ``manifest.jsonl`` says what each PNG is (prompt, seed, the run's
settings, where it was made), so the records, the static gallery and a sweep's grid come back without
reading any image but the thumbnails the gallery inlines. A manifest cut short by a killed kernel is
read up to its last complete line; a line whose PNG is gone is left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import NbdistUsageError
from ...image_files import thumbnail_jpeg
from ...jobs import ImageJob
from ...options import GenerateOptions
from ..output.static_html import INLINE_CAP
from ..results.result import GenerationResult, ImageRecord, load_image

__all__ = ["open_run", "read_manifest"]

_SETTINGS = ("steps", "guidance", "height", "width", "negative", "scheduler")


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The manifest's entries whose PNG exists, one per image (the last line for an index wins), by index."""
    path = folder / "manifest.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise NbdistUsageError(f"open_run: {str(folder)!r} holds no nbdist run ({path.name}: {exc.strerror})") from None
    entries: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed process
        if isinstance(entry, dict) and "index" in entry and (folder / str(entry.get("file", ""))).is_file():
            entries[int(entry["index"])] = entry
    return [entries[i] for i in sorted(entries)]


def open_run(folder: str | Path, thumbnail_size: int = 256) -> GenerationResult:
    """The run saved in ``folder`` as a ``GenerationResult``: records with their files, its static gallery.

    ``res[i].image`` loads image ``i`` from its PNG when asked. What the files cannot say is left empty:
    ``missing`` (jobs that never made a file are not in the manifest), ``seconds`` and ``logs``.
    """
    root = Path(folder)
    entries = read_manifest(root)
    if not entries:
        raise NbdistUsageError(f"open_run: {str(root)!r} holds no finished image")
    prompts = list(dict.fromkeys(e["prompt"] for e in entries))
    records = [_record(root, e, prompts.index(e["prompt"]), thumbnail_size) for e in entries]
    first = entries[0]
    axes = _sweep_axes(entries)
    jobs = [ImageJob(r.index, r.prompt_index, r.prompt, r.seed, tuple(r.params.items())) for r in records]
    settings = {k: first.get(k) for k in _SETTINGS if first.get(k) is not None}
    options = GenerateOptions(seed=int(first["seed"]) - int(first["index"]), save_dir=str(root), sweep=axes)
    return GenerationResult(
        records=records,
        missing=[],
        options=options,
        seed=options.seed or 0,
        model=str(first.get("model", "")),
        num_processes=len({e.get("rank") for e in entries}),
        seconds=0.0,
        save_dir=root,
        settings=settings,
        sources=dict(first.get("sources") or {}),
        jobs=jobs,
    )


def _record(root: Path, entry: dict[str, Any], prompt_index: int, thumbnail_size: int) -> ImageRecord:
    """One image's record; the thumbnail is made from the PNG only where the static copy inlines it."""
    path = root / entry["file"]
    record = ImageRecord(
        index=int(entry["index"]),
        prompt=entry["prompt"],
        prompt_index=prompt_index,
        seed=int(entry["seed"]),
        rank=entry.get("rank"),
        device=entry.get("device"),
        seconds=entry.get("seconds"),
        path=path,
        note=entry.get("note"),
        skipped_steps=entry.get("skipped_steps"),
        params={axis: entry.get(axis) for axis in entry.get("sweep") or {}},
    )
    if record.index < INLINE_CAP:
        stat = path.stat()
        record.thumbnail = thumbnail_jpeg(load_image(str(path), (stat.st_size, stat.st_mtime_ns)), thumbnail_size)
    return record


def _sweep_axes(entries: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A sweep's axes and their values in the order the images first used them."""
    axes: dict[str, list[Any]] = {}
    for entry in entries:
        for axis in entry.get("sweep") or {}:
            values = axes.setdefault(axis, [])
            if entry.get(axis) not in values:
                values.append(entry.get(axis))
    return axes
