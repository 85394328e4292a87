"""A hub model's download as a phase: "downloading the model: 1.2 of 6.9 GB".

The first run of a hub model downloads several GB while every progress bar is off (a cell shows the
gallery, not tqdm), which looks like a hang. huggingface_hub's ``snapshot_download`` takes a
``tqdm_class`` for its byte bars, the maintained way to follow a download; diffusers'
``DiffusionPipeline.download`` (which ``from_pretrained`` calls for a hub id) passes none. So for one
load the name it calls is bound to ``snapshot_download`` with a class of nbdist's, which never draws
and reports bytes done and the total (updated from the download threads) to the run's phase reporter.
Loads that no run listens to are left alone.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import phases

__all__ = ["download_progress", "size_text"]

INTERVAL = 0.5  # seconds between two reports; the last byte always reported


def size_text(done: float, total: float) -> str:
    """``1.2 of 6.9 GB`` (MB under a tenth of a GB), decimal units as the hub shows sizes."""
    unit, scale = ("GB", 1e9) if total >= 1e8 else ("MB", 1e6)
    return f"{done / scale:.1f} of {total / scale:.1f} {unit}"


@contextlib.contextmanager
def download_progress() -> Iterator[None]:
    """While a pipeline loads, report the bytes of any download ``from_pretrained`` makes (when a run listens)."""
    reporter = phases.current()
    if reporter is None:
        yield
        return
    from diffusers.pipelines import pipeline_utils
    from huggingface_hub import snapshot_download

    original = pipeline_utils.snapshot_download
    pipeline_utils.snapshot_download = functools.partial(snapshot_download, tqdm_class=_bar_class(reporter))
    try:
        yield
    finally:
        pipeline_utils.snapshot_download = original


def _bar_class(reporter: Callable[[str], None]) -> type:
    """A tqdm that draws nothing; its byte bars report ``downloading the model: done of total``."""
    from tqdm import tqdm

    class _Silent:
        def write(self, text: str) -> None:
            pass

        def flush(self) -> None:
            pass

    state = {"last": 0.0, "started": False}

    class Bytes(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "file": _Silent(), "disable": False})
            if self.unit == "B" and not state["started"]:  # made in the loading thread: the first report from it
                state["started"] = True  # (a gallery shows itself then; the byte counts come from download threads)
                reporter("downloading the model…")

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self.unit == "B" and self.total:  # the file-count bar aside
                now = time.monotonic()
                if self.n >= self.total or now - state["last"] >= INTERVAL:
                    state["last"] = now
                    reporter(f"downloading the model: {size_text(self.n, self.total)}")
            return shown

    return Bytes
