"""The live gallery: one tile per image, filled as workers stream images back.

Called only from the collector thread (and from the main thread before and after it runs), so widget
traits are never written concurrently. When the run ends the display is updated in place with a
bundle that carries both the widget and a static HTML copy, so a notebook viewed without a kernel
(nbconvert, GitHub, a reopened file) still shows every image.
"""

from __future__ import annotations

import html
import io
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from ..messages import ImageFailed, ImageReady, Message, StepProgress, WorkerStarted
from ..parent.observer import RunInfo
from ..parent.results import GenerationResult
from ..parent.static_html import StaticTile, data_uri, render_gallery

__all__ = ["Gallery", "Tile"]

_TILE_WIDTH = "180px"


def _placeholder(width: int, height: int, side: int) -> bytes:
    """A light grey JPEG with the final thumbnail's shape, so tiles keep their size as images arrive."""
    from PIL import Image

    scale = side / max(width, height)
    img = Image.new("RGB", (max(1, round(width * scale)), max(1, round(height * scale))), (235, 235, 235))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=50)
    return buf.getvalue()


class Tile:
    """One image slot: picture, status line ("queued", "step 3/30 · worker 1"), caption."""

    def __init__(self, index: int, prompt: str, seed: int, placeholder: bytes) -> None:
        self.index = index
        self.prompt = prompt
        self.seed = seed
        self.thumbnail: bytes | None = None
        self.image = widgets.Image(value=placeholder, format="jpeg", layout=widgets.Layout(width="100%"))
        self.status = widgets.HTML(value="<i>queued</i>")
        self.caption = widgets.HTML(value=self._caption(None, None))
        self.box = widgets.VBox(
            [self.image, self.status, self.caption],
            layout=widgets.Layout(width=_TILE_WIDTH, border="1px solid #ddd", padding="4px"),
        )

    def _caption(self, rank: int | None, seconds: float | None) -> str:
        title = html.escape(self.prompt, quote=True)
        extra = "" if rank is None else f" · worker {rank}"
        extra += "" if seconds is None else f" · {seconds:.1f} s"
        return (
            f'<div title="{title}" style="white-space:nowrap;overflow:hidden;text-overflow:ellipsis">'
            f"{html.escape(self.prompt)}</div><small>#{self.index} · seed {self.seed}{extra}</small>"
        )

    def show_step(self, step: int, total: int, rank: int) -> None:
        self.status.value = f"step {step}/{total} · worker {rank}"

    def show_image(self, msg: ImageReady) -> None:
        self.thumbnail = msg.thumbnail
        self.image.value = msg.thumbnail
        self.status.value = ""
        self.caption.value = self._caption(msg.rank, msg.seconds)

    def show_error(self, msg: ImageFailed) -> None:
        self.status.value = f'<span style="color:#b00020">failed: {html.escape(msg.error)}</span>'


class Gallery:
    """A run observer that draws the tiles and a header line in the cell output."""

    def __init__(self) -> None:
        self.tiles: list[Tile] = []
        self.header = widgets.HTML()
        self.grid = widgets.Box(layout=widgets.Layout(display="flex", flex_flow="row wrap", gap="6px"))
        self.widget = widgets.VBox([self.header, self.grid])
        self._handle: Any = None
        self._total = 0
        self._done = 0

    def on_start(self, run: RunInfo) -> None:
        placeholder = _placeholder(run.width, run.height, run.options.thumbnail_size)
        self.tiles = [Tile(job.index, job.prompt, job.seed, placeholder) for job in run.jobs]
        self.grid.children = [t.box for t in self.tiles]
        self._total = len(run.jobs)
        self._seed = run.seed
        self._n = run.num_processes
        self._update_header()
        self._handle = display(self.widget, display_id=True)

    def _update_header(self) -> None:
        self.header.value = f"<b>{self._done}/{self._total}</b> images · {self._n} worker(s) · seed {self._seed}"

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, StepProgress):
            for i in msg.indices:
                self.tiles[i].show_step(msg.step, msg.total, msg.rank)
        elif isinstance(msg, ImageReady):
            self.tiles[msg.index].show_image(msg)
            self._done += 1
            self._update_header()
        elif isinstance(msg, ImageFailed):
            self.tiles[msg.index].show_error(msg)
        elif isinstance(msg, WorkerStarted):
            pass

    def static_html(self, result: GenerationResult) -> str:
        """The gallery as plain HTML with inline thumbnails."""
        errors = {r.index: r.error for r in result.records if r.error}
        tiles = [
            StaticTile(
                src=data_uri(t.thumbnail) if t.thumbnail else None,
                caption=f"{t.prompt} · seed {t.seed}",
                title=t.prompt,
                error=errors.get(t.index),
            )
            for t in self.tiles
        ]
        return render_gallery(tiles, heading=result.summary())

    def on_end(self, result: GenerationResult) -> None:
        self.header.value = html.escape(result.summary())
        if self._handle is None:
            return
        bundle = {
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.widget.model_id,
            },
            "text/html": self.static_html(result),
            "text/plain": result.summary(),
        }
        self._handle.update(bundle, raw=True)
