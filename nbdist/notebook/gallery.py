"""The live gallery: a run observer that turns worker messages into widget updates in the cell.

Messages arrive on the collector thread; ``GalleryState`` (plain Python) absorbs them, and ``on_tick``
sends what changed at most every ``interval`` seconds, so hundreds of images and step reports cost a
few comm messages per tick, not one per message. Widgets are created in ``on_start``: a magic that
fails its argument checks never opens a comm.

Output contract (docs/how-it-works.md): the cell shows one ``display_data`` holding the live widget
(and a one-line text/plain for viewers without widgets); the static copy is the run result's text/html,
which the magic returns as the cell's value. Widget and result share a per-run token (a CSS class on
each), so the two pair up and only one of them shows.

In a kernel, a second ``display_data`` (with a display id) carries the run's progress as text, updated
about once a second with ``update_display_data``: those updates are plain outputs, not widget messages,
so they reach the cell even where the widget cannot be drawn (a JupyterLab kernel connection that
ignores comm messages, a front end without the widget extension). CSS hides it next to the drawn live
gallery; it is emptied when the run ends (the static copy then says it all).

A background run (``--background``) has no ``Out[]``: its cell returns at once. Its static copy is a
third ``display_data`` with a display id instead, updated as images arrive (at most every
``static_interval`` seconds, longer for big runs: each update re-sends every thumbnail) and replaced
by the finished run's copy at the end, so a notebook saved mid-run or after it keeps its gallery.
"""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from IPython.display import display, update_display

from ..image_files import encode_png, image_metadata
from ..messages import Message
from ..parent.output.grid import layout
from ..parent.output.saving import run_parameters
from ..parent.output.static_html import (
    INLINE_BYTES,
    INLINE_CAP,
    StaticTile,
    data_uri,
    fallback_html,
    image_detail,
    inlined,
    live_class,
    result_html,
    static_copy,
)
from ..parent.output.vscode import in_vscode
from ..parent.results.observer import RunInfo
from .gallery_actions import GalleryActions, tile_cells
from .gallery_state import GalleryState, HeaderView, TileState, format_seconds
from .gallery_widget import FullImage, GalleryWidget, TileModel

__all__ = ["WIDGET_VIEW_MIMETYPE", "Gallery"]

WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
FALLBACK_INTERVAL = 1.0  # seconds between text progress updates (each one re-renders a few lines)
STATIC_INTERVAL = 2.0  # least seconds between updates of a background run's static copy
STATIC_SECONDS_PER_MB = 2.0  # and more for a big copy: it is re-sent whole, thumbnails and all


def _in_kernel() -> bool:
    """True in a Jupyter kernel, the only place display updates reach a front end."""
    from IPython import get_ipython

    return hasattr(get_ipython(), "kernel")


class Gallery:
    """Draws the run in the cell output: header, tiles, and full-size images on request."""

    wants_previews = True  # the tiles show each image forming (``--preview``)

    def __init__(
        self,
        interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        fallback: bool | None = None,
        fallback_interval: float = FALLBACK_INTERVAL,
        background: bool = False,
        static_interval: float = STATIC_INTERVAL,
        panel_of: GalleryWidget | None = None,
    ) -> None:
        self.interval = interval
        self.panel_of = panel_of  # a run started from another gallery's viewer: drawn in its panels, not displayed
        self._records: Callable[[], list[Any]] = lambda: list(self._result.records) if self._result else []
        if panel_of is not None:
            fallback = False  # its comm answer has no cell to print text into
        # no Out[] will follow: the gallery keeps a static copy in the cell (not in VS Code: it would show both)
        self.background = background and not in_vscode()
        self.static_interval = static_interval
        self._static_id = f"nbdist-static-{secrets.token_hex(8)}"
        self._static_at = float("-inf")
        self._static_shown: tuple[int, int] = (-1, -1)  # (done, failed) in the static copy last sent
        self._static_wait = static_interval
        self.fallback_interval = fallback_interval
        self._fallback = fallback  # None: decided in on_start (on in a kernel)
        self._fallback_id = f"nbdist-progress-{secrets.token_hex(8)}"
        self._fallback_sent: dict[str, Any] | None = None
        self._last_fallback = 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self.state: GalleryState | None = None
        self.widget: GalleryWidget | None = None
        self.tiles: dict[int, TileModel] = {}
        self._last_flush = 0.0
        self._result: Any = None
        self._run: RunInfo | None = None
        self._params: dict[str, Any] = {}
        self._synced: set[int] = set()  # tiles whose thumbnail is widget state (within the static copy's caps)
        self._synced_bytes = 0
        self.token = secrets.token_hex(6)
        self._created = clock()  # the cell's start, near enough: what the early header's elapsed counts from
        self._phase = ""  # what the run is doing before it starts (the early header's line)
        self._live_id = f"nbdist-live-{secrets.token_hex(8)}"  # the early display, removable (``discard``)

    # -- observer protocol ------------------------------------------------------------------------

    def on_start(self, run: RunInfo) -> None:
        """Build the widgets (one comm per tile, one for the grid) and show them."""
        self.state = GalleryState(run, clock=self._clock)
        self._run, self._params = run, run_parameters(run)
        grids = layout(run.jobs, run.options.sweep)
        labelled = {i for g in grids if g.prompt_rows for row in g.cells for i in row}  # prompt is the row label
        cells = tile_cells(run)
        self.tiles = {
            tile.index: TileModel.from_state(tile, "" if tile.index in labelled else None, cells.get(tile.index, ""))
            for tile in self.state.tiles
        }
        aspect = run.width / run.height if run.height else 1.0
        shown = self._fill_widget(list(self.tiles.values()), aspect, [asdict(grid) for grid in grids])
        assert self.widget is not None
        self.widget.show_header(self.state.header())
        self._last_flush = self._clock()
        self._allow_actions(run)
        if self.panel_of is not None:
            self.panel_of.panels = [*self.panel_of.panels, self.widget]
            return
        if not shown:
            display(self.mimebundle(), raw=True)
        self._show_fallback()
        if self.background:
            display(self.static_bundle(), raw=True, display_id=self._static_id)
            self._static_at = self._clock()

    def _allow_actions(self, run: RunInfo) -> None:
        """The viewer's More like this and Refine start runs shown as panels of this gallery."""
        assert self.widget is not None
        parent = self.widget
        actions = GalleryActions(run, lambda: self._records(), lambda: Gallery(panel_of=parent))
        self.widget.on_action, self.widget.actionable = actions.handle, True

    def allow_actions_during(self, handle: Any) -> None:
        """A background run: the viewer's actions may use its finished images before it ends."""
        self._records = lambda: list(self._result.records) if self._result else list(handle.records)

    def on_phase(self, text: str) -> None:
        """What the run is doing before its workers report, shown at once.

        The first phase ("importing torch…", "loading the pipeline: 3 of 5 components") displays the
        gallery with only its header, so the cell is not blank while the kernel imports and loads; the
        tiles fill in when the run starts (``on_start``). A phase after that ("starting 2 workers") is
        the header's stats line until a worker reports.
        """
        if self.state is not None:
            with self._lock:
                self.state.phase = text
            self.flush()
            return
        self._phase = text
        if self.panel_of is not None:  # a panel shows itself once its run starts
            return
        if self.widget is None:
            self.widget = self._new_widget([], 1.0, [])
            self.widget.show_header(self._early_header())
            display(self.mimebundle(), raw=True, display_id=self._live_id)
        else:
            self.widget.show_header(self._early_header())
        self._show_fallback()

    def discard(self) -> None:
        """The run never started (bad input found while loading, a failed import): remove the early header.

        The cell then shows only the error, as it did before there was an early header.
        """
        if self.state is not None or self.widget is None:
            return
        update_display({"text/plain": ""}, raw=True, display_id=self._live_id)
        if self._fallback_sent is not None:
            update_display({"text/plain": ""}, raw=True, display_id=self._fallback_id)
            self._fallback_sent = None
        self.widget.close()
        self.widget = None

    def on_message(self, msg: Message) -> None:
        """Absorb a message; nothing is sent until the next tick (the run's first image: at once)."""
        if self.state is None:
            return
        with self._lock:
            first = self.state.done == 0
            self.state.apply(msg)
            if first and self.state.done:
                self._last_flush = float("-inf")  # fast to the first image: no coalescing delay for it

    def on_queued(self, ahead: int) -> None:
        """The run waits for ``ahead`` earlier runs (a background run is going): the header says so."""
        if self.state is None:
            return
        with self._lock:
            self.state.queued_behind = ahead
        self.flush()

    def allow_stop(self, cancel: Callable[[], None]) -> None:
        """Show a Stop button in the header that calls ``cancel`` (a background run: the kernel is free to hear it)."""
        if self.widget is not None:
            self.widget.on_stop = cancel
            self.widget.stoppable = True

    def on_tick(self) -> None:
        """Called by the collector often; sends the accumulated changes every ``interval`` seconds."""
        if self.state is not None and self._clock() - self._last_flush >= self.interval:
            self.flush()

    def on_end(self, result: Any) -> None:
        """Final update; the result carries this gallery's token so its static copy pairs with it."""
        if self.state is None or self.widget is None:
            return
        self._result = result
        result.display_token = self.token
        self.widget.stoppable = False
        with self._lock:
            self.state.finish(result.summary(), stopped=bool(getattr(result, "interrupted", False)))
        self.flush()
        self._update_fallback(final=True)
        if self.background:
            update_display(self.static_bundle(result), raw=True, display_id=self._static_id)

    # -- the rest ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the tiles that changed since the last flush, then the header."""
        if self.state is None or self.widget is None:
            return
        with self._lock:
            dirty = self.state.take_dirty()
            header = self.state.header()
            self._last_flush = self._clock()
        late = {}  # thumbnails past the widget state's caps
        for tile in dirty:
            synced = self._may_sync(tile)
            self.tiles[tile.index].update(tile, thumbnail=synced)
            if tile.thumbnail and not synced:
                late[tile.index] = tile.thumbnail
        self._send_unsynced_thumbnails(late, dirty)
        self.widget.show_header(header)
        if self._clock() - self._last_fallback >= self.fallback_interval:
            self._update_fallback()
        if self.background and self._result is None:
            self._update_static()

    def _may_sync(self, tile: TileState) -> bool:
        """Whether a new thumbnail may become widget state (saved with the notebook): within the caps."""
        if not tile.thumbnail or tile.index in self._synced:
            return tile.index in self._synced
        if len(self._synced) >= INLINE_CAP or self._synced_bytes + len(tile.thumbnail) > INLINE_BYTES:
            return False
        self._synced.add(tile.index)
        self._synced_bytes += len(tile.thumbnail)
        return True

    def _send_unsynced_thumbnails(self, late: dict[int, bytes], dirty: list[TileState]) -> None:
        """Thumbnails past the caps go as one custom message, then the kernel lets go of them (``thumbnails``
        makes them again from the files if a browser asks): its memory stays flat."""
        assert self.widget is not None
        self.widget.send_thumbnails(late)
        for tile in dirty:
            if tile.index in late and tile.index >= INLINE_CAP:  # the background static copy keeps the first
                tile.thumbnail = b""

    def thumbnails(self, indices: list[int]) -> dict[int, bytes]:
        """Thumbnails of finished images, made again from their files (asked for by a browser that lacks them)."""
        from ..image_files import thumbnail_jpeg

        if self._result is None or self._run is None:
            return {}
        by_index = {r.index: r for r in self._result.records}
        found = {}
        for index in indices:
            record = by_index.get(index)
            if record is not None and record.ok:
                found[index] = thumbnail_jpeg(record.image, self._run.options.thumbnail_size)
        return found

    def fallback_bundle(self, final: bool = False) -> dict[str, Any]:
        """The text progress: the header's lines; once the run is over, none (the static copy follows)."""
        if final:
            return {"text/html": fallback_html(self.token, [], hidden=True), "text/plain": ""}
        header = self.state.header() if self.state is not None else self._early_header()
        lines = [header.stats, *header.workers]
        return {
            "text/html": fallback_html(self.token, lines, title=header.title),
            "text/plain": "\n".join([header.title, *lines]),
        }

    def _update_fallback(self, final: bool = False) -> None:
        """Send the text progress if it changed (at most every ``fallback_interval`` s, and at the end)."""
        if not self._fallback or self.state is None:
            return
        self._last_fallback = self._clock()
        bundle = self.fallback_bundle(final)
        if bundle != self._fallback_sent:
            update_display(bundle, raw=True, display_id=self._fallback_id)
            self._fallback_sent = bundle

    def static_bundle(self, result: Any = None) -> dict[str, Any]:
        """A background run's static copy: the finished run's (``result``), or the images so far.

        The copy of a run still going carries the same token, so it hides next to the live gallery
        like the finished one; it is what a notebook saved mid-run shows once reopened.
        """
        assert self.state is not None and self._run is not None
        if result is not None:
            return {"text/html": result_html(result), "text/plain": f"nbdist gallery: {result.summary()}"}
        with self._lock:
            head = self.state.tiles[:INLINE_CAP]
            shown = inlined([(tile.index, tile.thumbnail) for tile in head])
            tiles = {tile.index: _static_tile(tile, tile.index in shown) for tile in head}
            done, total = self.state.done, len(self.state.tiles)
        heading = f"still running: {done} of {total} images so far"
        run = self._run
        page = static_copy(tiles, heading, self.token, run.jobs, run.options.sweep)
        return {"text/html": page, "text/plain": f"nbdist gallery: {heading}"}

    def _update_static(self) -> None:
        """Refresh a background run's static copy when images arrived; the first one at once, then throttled."""
        assert self.state is not None
        shown = (self.state.done, self.state.failed)
        if shown == self._static_shown:
            return
        first = self._static_shown[0] <= 0 < shown[0]
        if not first and self._clock() - self._static_at < self._static_wait:
            return
        bundle = self.static_bundle()
        update_display(bundle, raw=True, display_id=self._static_id)
        self._static_shown, self._static_at = shown, self._clock()
        self._static_wait = max(self.static_interval, STATIC_SECONDS_PER_MB * len(bundle["text/html"]) / 1e6)

    def mimebundle(self) -> dict[str, Any]:
        """The display bundle: the widget view plus a line for viewers without widget support."""
        assert self.widget is not None
        count = f" of {len(self.state.tiles)} images" if self.state is not None else ""
        return {
            WIDGET_VIEW_MIMETYPE: {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id},
            "text/plain": f"nbdist gallery{count} (live view: needs the kernel that ran it)",
        }

    def _new_widget(self, tiles: list[TileModel], aspect: float, grids: list[dict[str, Any]]) -> GalleryWidget:
        widget = GalleryWidget(tiles=tiles, aspect=aspect, full_image=self.full_image, grids=grids)
        widget.thumbnails = self.thumbnails
        widget.add_class("nbdist-live")
        widget.add_class(live_class(self.token))
        return widget

    def _fill_widget(self, tiles: list[TileModel], aspect: float, grids: list[dict[str, Any]]) -> bool:
        """Give the widget the run's tiles; True if it was already shown (the early header), filled in place."""
        if self.widget is None:
            self.widget = self._new_widget(tiles, aspect, grids)
            return False
        with self.widget.hold_sync():
            self.widget.tiles, self.widget.aspect, self.widget.grids = tiles, aspect, grids
        return True

    def _early_header(self) -> HeaderView:
        """The header before the run's tiles exist: what is happening, and for how long already."""
        stats = f"{self._phase} · elapsed {format_seconds(self._clock() - self._created)}"
        return HeaderView(title="nbdist · preparing the run", stats=stats, fraction=0.0, workers=())

    def _show_fallback(self) -> None:
        """Display the text progress (in a kernel), or update it when it is already shown."""
        if self._fallback is None:
            self._fallback = _in_kernel()
        if not self._fallback:
            return
        bundle = self.fallback_bundle()
        if self._fallback_sent is None:
            display(bundle, raw=True, display_id=self._fallback_id)
        elif bundle != self._fallback_sent:
            update_display(bundle, raw=True, display_id=self._fallback_id)
        self._fallback_sent, self._last_fallback = bundle, self._clock()

    def full_image(self, index: int) -> FullImage | str:
        """Image ``index`` at full size as PNG, or why it is not available (asked by the browser).

        A saved image is its file, sent as it is (its text chunk included); only a ``--no-save`` one is encoded.
        """
        if self._result is None:
            return "the run is still going"
        record = next((r for r in self._result.records if r.index == index), None)
        if record is None or not record.ok:
            return (record.error if record is not None else None) or "this image was not generated"
        name = f"nbdist-{index:04d}-seed{record.seed}.png"
        if record.path is not None:
            return _file_image(record.path, name)
        width, height = record.image.size
        return FullImage(encode_png(record.image, self._metadata(record)), name, width, height)

    def _metadata(self, record: Any) -> dict[str, Any] | None:
        """The parameters of a record, as the saved PNGs carry them in their text chunk."""
        job = next((j for j in self._run.jobs if j.index == record.index), None) if self._run is not None else None
        if job is None:
            return None
        return image_metadata(
            self._params,
            job,
            size=record.image.size,
            rank=record.rank,
            device=record.device,
            seconds=record.seconds,
            note=getattr(record, "note", None),
        )

    def static_html(self, result: Any) -> str:
        """The static copy of the run (the result's text/html)."""
        return result_html(result)


def _file_image(path: Any, name: str) -> FullImage | str:
    """A saved PNG as the viewer gets it: its bytes as written, and its size from the header."""
    from PIL import Image

    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except OSError as exc:
        return f"cannot read {str(path)!r}: {exc.strerror or exc}"
    return FullImage(data, name, width, height)


def _static_tile(tile: TileState, inline: bool = True) -> StaticTile:
    """A tile of a background run's static copy while it is still going (what the live tile shows)."""
    detail = image_detail(tile.index, tile.seed, tile.rank, tile.device, tile.seconds, params=tile.params)
    if tile.thumbnail and inline:
        return StaticTile(src=data_uri(tile.thumbnail), caption=tile.prompt, title=tile.prompt, detail=detail)
    error = tile.label if tile.status in ("failed", "stopped", "missing") else "not generated yet"
    return StaticTile(src=None, caption=tile.prompt, title=tile.prompt, error=error, detail=detail)
