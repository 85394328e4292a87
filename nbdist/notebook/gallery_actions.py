"""The viewer's buttons: Copy cell, More like this, Refine, answered in the kernel.

Copy cell needs no kernel: every tile carries its cell (``res[i].cell``'s text) from the start, so it
works while the kernel is busy. More like this and Refine start a run in the background on the same
warm workers; its gallery opens as a panel under this one (a child ``GalleryWidget`` in ``panels``),
with the same viewer and buttons, so its images appear in the notebook without a cell being written.
The browser's request reaches the kernel once the kernel is free: after a blocking run, or at once
during a ``--background`` one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..parent.results.cell import image_cell, image_options, model_name
from ..parent.results.observer import RunInfo

__all__ = ["ACTIONS", "GalleryActions", "tile_cells"]

ACTIONS = ("vary", "refine")
VARY_COUNT = 8  # "more like this": eight neighbours ...
VARY_STRENGTH = 0.2  # ... at a strength that keeps the picture


def tile_cells(run: RunInfo) -> dict[int, str]:
    """Each image's own cell (what ``res[i].cell`` gives), for the viewer's Copy cell."""
    name = model_name(run.model)
    return {job.index: image_cell(name, job.prompt, image_options(run.options, job)) for job in run.jobs}


class GalleryActions:
    """Turns a browser request ``{"type": "action", "action": "vary"|"refine", "index": i, ...}`` into a run.

    ``records`` gives the run's records so far (the result's once it is over); ``panel`` makes the
    gallery that will show the new run (a child of this one).
    """

    def __init__(self, run: RunInfo, records: Callable[[], list[Any]], panel: Callable[[], Any]) -> None:
        self._run, self._records, self._panel = run, records, panel

    def handle(self, content: dict[str, Any]) -> str | None:
        """Start the run; returns why not (the browser shows it), or None once it is queued."""
        action, index = content.get("action"), content.get("index")
        record = next((r for r in self._records() if r.index == index), None)
        if action not in ACTIONS or record is None or record.image is None:
            return "this image is not finished yet"
        if record.run is None:  # a background run still going: its records are not tied to a result yet
            record.run = self._run
        try:
            strength = float(content.get("strength") or (VARY_STRENGTH if action == "vary" else 0.4))
            options = {"background": True, "observers": [self._panel()]}
            if action == "vary":
                record.vary(n=int(content.get("n") or VARY_COUNT), strength=strength, **options)
            else:
                prompt = str(content.get("prompt") or "").strip() or None
                record.refine(prompt=prompt, strength=strength, **options)
        except Exception as exc:  # a bad strength, a busy pool: said in the viewer, never a traceback in a comm
            print(f"nbdist: {action}: {exc}", file=sys.stderr)
            return f"{type(exc).__name__}: {exc}"
        return None
