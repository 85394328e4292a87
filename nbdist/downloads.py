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
import threading
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

    def counted(*args: Any, **kwargs: Any) -> Any:
        total = _planned_bytes(snapshot_download, args, kwargs)
        return snapshot_download(*args, **kwargs, tqdm_class=_bar_class(reporter, total))

    pipeline_utils.snapshot_download = counted
    try:
        yield
    finally:
        pipeline_utils.snapshot_download = original


def _planned_bytes(download: Callable[..., Any], args: tuple, kwargs: dict) -> int | None:
    """The bytes the download will fetch, from a dry run of it (the files' sizes, the cached ones left out).

    Why ask first: snapshot_download's byte bar grows its total as each file starts, so during the
    download it would say "0.3 of 0.3 GB" of a 7 GB model. The dry run asks the hub for each file's
    size (metadata only). None if it fails: the real call then reports its own error.
    """
    try:
        planned = download(*args, **kwargs, dry_run=True, tqdm_class=_bar_class(None, None))
        return sum(entry.file_size or 0 for entry in planned if entry.will_download)
    except Exception:
        return None


class _Silent:
    """Where the bars draw: nowhere."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _bar_class(reporter: Callable[[str], None] | None, total: int | None) -> type:
    """A tqdm that draws nothing; its byte bars report ``downloading the model: done of total`` to ``reporter``."""
    from tqdm import tqdm

    state = {"last": 0.0, "started": False, "done": 0.0}
    lock = threading.Lock()

    class Bytes(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "file": _Silent(), "disable": False})
            if reporter is not None and self.unit == "B" and not state["started"]:
                state["started"] = True  # made in the loading thread: a gallery shows itself from there
                reporter("downloading the model…")  # (the byte counts come from the download threads)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if reporter is not None and self.unit == "B":  # the file-count bar aside
                with lock:  # several download threads update at once; the observers see one report at a time
                    state["done"] = done = max(state["done"], self.n)  # bytes written; the transfer bar counts fewer
                    whole = total or self.total or 0
                    now = time.monotonic()
                    if whole and (done >= whole or now - state["last"] >= INTERVAL):
                        state["last"] = now
                        reporter(f"downloading the model: {size_text(min(done, whole), whole)}")
            return shown

    return Bytes
