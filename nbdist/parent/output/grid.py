"""A sweep laid out as labelled grids: columns for the first axis, rows for the prompts, a grid per value of the rest.

One layout serves the static HTML copy, ``GenerationResult.grid()`` (one PIL image) and the
``grid.png`` files ``--save-dir`` writes. Rows are the cell's prompts (each of their ``-k`` images);
with a single prompt and two or more axes, the second axis takes the rows instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...jobs import ImageJob
from ...sweep import axis_label

__all__ = ["Grid", "grid_image", "layout"]


@dataclass
class Grid:
    """One labelled grid: ``cells[r][c]`` is the image index shown at row ``r``, column ``c``."""

    heading: str
    columns: list[str]
    rows: list[str]
    cells: list[list[int | None]] = field(default_factory=list)
    prompt_rows: bool = True  # the row labels are the prompts (tiles need not repeat them); else a swept axis


def _row_label(job: ImageJob, k_count: int) -> str:
    return job.prompt + (f" (#{job.k + 1})" if k_count > 1 else "")


def layout(jobs: Sequence[ImageJob], axes: dict[str, list[Any]]) -> list[Grid]:
    """The grids of a sweep (empty without one)."""
    names = list(axes)
    if not names or not jobs:
        return []
    row_keys = sorted({(j.prompt_index, j.k) for j in jobs})
    row_axis = names[1] if len(row_keys) == 1 and len(names) >= 2 else None
    rest = [n for n in names[1:] if n != row_axis]
    k_count = 1 + max(j.k for j in jobs)
    grids: dict[tuple[Any, ...], Grid] = {}
    for job in jobs:
        values = job.settings
        key = tuple(values[n] for n in rest)
        grid = grids.get(key)
        if grid is None:
            rows = [axis_label(row_axis, v) for v in axes[row_axis]] if row_axis else []
            heading = ", ".join(axis_label(n, v) for n, v in zip(rest, key, strict=True))
            columns = [axis_label(names[0], v) for v in axes[names[0]]]
            grid = grids[key] = Grid(heading, columns, rows, prompt_rows=row_axis is None)
        if row_axis is None:
            label = _row_label(job, k_count)
            row = row_keys.index((job.prompt_index, job.k))
            while len(grid.rows) <= row:
                grid.rows.append("")
            grid.rows[row] = label
        else:
            row = axes[row_axis].index(values[row_axis])
        while len(grid.cells) <= row:
            grid.cells.append([None] * len(grid.columns))
        grid.cells[row][axes[names[0]].index(values[names[0]])] = job.index
    return list(grids.values())


def grid_image(grid: Grid, images: dict[int, Any], cell: int = 256) -> Any:
    """One grid as a PIL image: column labels on top, row labels on the left, the heading above."""
    from PIL import Image, ImageDraw, ImageOps

    label_w, label_h, head_h = 200, 28, 28 if grid.heading else 0
    width = label_w + cell * len(grid.columns)
    height = head_h + label_h + cell * len(grid.rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if grid.heading:
        draw.text((8, 6), grid.heading, fill="black")
    for c, text in enumerate(grid.columns):
        draw.text((label_w + c * cell + 6, head_h + 8), text, fill="black")
    for r, text in enumerate(grid.rows):
        top = head_h + label_h + r * cell
        draw.text((6, top + cell // 2 - 6), text[:30], fill="black")
        for c, index in enumerate(grid.cells[r] if r < len(grid.cells) else []):
            image = images.get(index) if index is not None else None
            if image is not None:
                tile = ImageOps.contain(image.convert("RGB"), (cell, cell), Image.Resampling.NEAREST)
                canvas.paste(tile, (label_w + c * cell, top))
            else:
                draw.text((label_w + c * cell + 6, top + cell // 2), "not generated", fill="#b00020")
    return canvas


def value_text(params: dict[str, Any]) -> str:
    """``guidance=4 · steps=3``: an image's sweep values for its caption."""
    return " · ".join(axis_label(k, v) for k, v in params.items())
