"""The gallery's widgets: one anywidget view for the whole grid, one small data model per tile.

Why this shape: a finished image is one comm message carrying only that tile's JPEG (a binary
buffer, no base64), and a step update only touches the tiles being denoised, so 200+ images never
cause a full re-render; the JavaScript (``static/gallery.js``) patches the one tile that changed.
Tile models are plain ``@jupyter-widgets/base`` ``WidgetModel``s, so their state is saved with the
notebook's widget state like any widget's: thumbnails too, up to the static copy's caps
(``INLINE_CAP`` images, ``INLINE_BYTES``, in the order they arrive; the ``Gallery`` decides). Later
thumbnails travel as custom messages (``{"type": "thumbs"}`` with binary buffers), which no notebook
saves: a 5,000-image cell keeps a notebook of a few MB, and the browser asks for the ones it lacks
when their tiles scroll into view (a reopened page, answered once the kernel is free). The view
decodes only the thumbnails of tiles in view (``static/gallery.js``), so a long gallery scrolls smoothly.

The full-size image never leaves Python unless asked for: a click in the browser sends a custom
message, answered with a PNG. While the cell is still running the kernel cannot read browser
messages, so the viewer shows the enlarged thumbnail and the answer arrives when the cell ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets as widgets
import traitlets as t

from .gallery_state import HeaderView, TileState

__all__ = ["FullImage", "GalleryWidget", "TileModel"]

_STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class FullImage:
    """A full-size image ready to send: PNG bytes, a file name for the download, its size."""

    png: bytes
    name: str
    width: int
    height: int


class TileModel(widgets.Widget):
    """One image slot's data; drawn by the gallery view (it has no view of its own)."""

    index = t.Int().tag(sync=True)
    prompt = t.Unicode().tag(sync=True)
    caption = t.Unicode().tag(sync=True)  # the prompt, or "" where a sweep's row label already shows it
    seed = t.Int().tag(sync=True)
    status = t.Unicode("queued").tag(sync=True)
    label = t.Unicode("queued").tag(sync=True)
    meta = t.Unicode().tag(sync=True)
    fraction = t.Float(0.0).tag(sync=True)
    thumbnail = t.Bytes(b"").tag(sync=True)
    error = t.Unicode().tag(sync=True)
    preview = t.Bytes(b"").tag(sync=True)  # the image forming (JPEG, ~96 px) until ``thumbnail`` arrives
    cell = t.Unicode().tag(sync=True)  # the %%distgen cell that makes this image alone (the viewer's Copy cell)

    @classmethod
    def from_state(cls, tile: TileState, caption: str | None = None, cell: str = "") -> TileModel:
        """A model with the tile's current state (one comm_open); ``caption`` defaults to the prompt."""
        caption = tile.prompt if caption is None else caption
        model = cls(index=tile.index, prompt=tile.prompt, caption=caption, seed=tile.seed, cell=cell)
        model.update(tile)
        return model

    def update(self, tile: TileState, thumbnail: bool = True) -> None:
        """Copy the tile's state (its thumbnail if ``thumbnail``); traitlets sends only what changed, in one message."""
        with self.hold_sync():
            self.status = tile.status
            self.label = tile.label
            self.meta = tile.meta
            self.fraction = tile.step / tile.total if tile.total else 0.0
            self.error = tile.error
            if thumbnail and tile.thumbnail and tile.thumbnail != self.thumbnail:
                self.thumbnail = tile.thumbnail
            if tile.preview != self.preview:  # emptied with the finished image: saved widget state stays small
                self.preview = tile.preview


FullImageSource = Callable[[int], "FullImage | str"]
ThumbnailSource = Callable[[list[int]], dict[int, bytes]]


class GalleryWidget(anywidget.AnyWidget):
    """Header (progress, rate, ETA, one line per worker), tile grid, and a viewer for one image.

    A sweep's tiles sit in labelled grids (column headers, row labels, a heading per value of a third
    axis); the viewer's ‹ › then walk along a row and ↑ ↓ move between rows.
    """

    _esm = _STATIC / "gallery.js"
    _css = _STATIC / "gallery.css"

    tiles = t.List(t.Instance(TileModel)).tag(sync=True, **widgets.widget_serialization)
    header = t.Dict().tag(sync=True)
    aspect = t.Float(1.0).tag(sync=True)
    stoppable = t.Bool(False).tag(sync=True)  # the header shows a Stop button (background runs)
    # A sweep's labelled grids (``parent.grid.Grid`` as dicts: heading, columns, rows, cells of tile
    # indices); empty: the tiles flow in prompt order. The view lays tiles out once and fills them in place.
    grids = t.List(t.Dict()).tag(sync=True)
    # Runs started from this gallery's viewer (More like this, Refine): each a gallery of its own, drawn below.
    panels = t.List(t.Instance(anywidget.AnyWidget)).tag(sync=True, **widgets.widget_serialization)
    actionable = t.Bool(False).tag(sync=True)  # the viewer offers More like this and Refine

    def __init__(
        self,
        tiles: list[TileModel],
        aspect: float,
        full_image: FullImageSource | None = None,
        grids: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(tiles=tiles, aspect=aspect, grids=grids or [])
        self.full_image = full_image
        self.thumbnails: ThumbnailSource | None = None  # thumbnails the browser asks for (not in widget state)
        self.on_stop: Callable[[], None] | None = None
        self.on_action: Callable[[dict[str, Any]], str | None] | None = None  # gallery_actions.GalleryActions
        self.on_msg(self._on_custom)

    def show_header(self, header: HeaderView) -> None:
        """Replace the header (sent only if it differs from what the browser has)."""
        self.header = header.as_dict()

    def _on_custom(self, _widget: Any, content: dict[str, Any], _buffers: list[bytes]) -> None:
        """Browser → kernel: ``{"type": "full", "index": i}`` asks for image i at full size; ``{"type": "stop"}``."""
        if isinstance(content, dict) and content.get("type") == "stop":
            if self.on_stop is not None:
                self.on_stop()
            return
        if isinstance(content, dict) and content.get("type") == "action":
            error = self.on_action(content) if self.on_action is not None else "no actions here"
            self.send({"type": "action", "index": content.get("index"), "ok": error is None, "error": error})
            return
        if isinstance(content, dict) and content.get("type") == "thumbs":
            self._answer_thumbnails(content.get("indices"))
            return
        if not isinstance(content, dict) or content.get("type") != "full":
            return
        try:
            index = int(content["index"])
        except (KeyError, TypeError, ValueError):
            return
        answer = self.full_image(index) if self.full_image is not None else "no full-size images here"
        if isinstance(answer, FullImage):
            reply = {"type": "full", "index": index, "ok": True, "name": answer.name}
            reply |= {"width": answer.width, "height": answer.height}
            self.send(reply, buffers=[answer.png])
        else:
            self.send({"type": "full", "index": index, "ok": False, "error": answer})

    def send_thumbnails(self, thumbnails: dict[int, bytes]) -> None:
        """Thumbnails outside the widget state, one message for all: ``indices`` name the buffers in order."""
        if thumbnails:
            self.send({"type": "thumbs", "indices": list(thumbnails)}, buffers=list(thumbnails.values()))

    def _answer_thumbnails(self, indices: Any) -> None:
        """Browser → kernel: thumbnails of tiles scrolled into view that it does not have (at most 200 a time)."""
        if self.thumbnails is None or not isinstance(indices, list):
            return
        wanted = [int(i) for i in indices[:200] if isinstance(i, int)]
        self.send_thumbnails(self.thumbnails(wanted))
