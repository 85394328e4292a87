"""A self-contained HTML gallery: what a saved notebook, nbconvert, GitHub or ``index.html`` shows.

Widgets need a live kernel or saved widget state to render; plain HTML with inline (or linked)
images renders everywhere. Every string that comes from a prompt is escaped. The layout is carried
by inline styles too, so a viewer that strips ``<style>`` (GitHub, an untrusted notebook) still shows
a grid of captioned thumbnails.

In a notebook the static copy is the text/html of the run's result (its ``Out[]``), right after the
live widget gallery. Where both render (JupyterLab, Notebook 7, nbconvert with widget JS) the copy
hides itself with a CSS rule that only matches when the live gallery of the same run is its sibling;
where the widget cannot render (no kernel, no widget state) the copy shows and hides the widget's
empty placeholder or "model not found" line instead. See README, "Gallery".
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "INLINE_BYTES",
    "INLINE_CAP",
    "StaticTile",
    "data_uri",
    "fallback_class",
    "fallback_html",
    "inlined",
    "live_class",
    "render_gallery",
    "result_html",
    "result_token",
    "static_class",
    "static_copy",
]


@dataclass(frozen=True)
class StaticTile:
    """One tile: an image source (data URI or relative path), a caption, and an optional error.

    ``detail`` is an optional second, smaller caption line (seed, worker, seconds).
    """

    src: str | None
    caption: str
    title: str
    error: str | None = None
    href: str | None = None
    detail: str = ""


def data_uri(jpeg: bytes) -> str:
    """Inline JPEG bytes as a ``data:`` URI."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def result_token(result: Any) -> str:
    """A token that pairs one run's live gallery with its static copy in the same output area.

    The gallery picks its token when it draws the widget (a class set after display is not applied by
    every front-end) and stores it on the result as ``display_token``; a result made without a
    gallery falls back to its id.
    """
    return str(getattr(result, "display_token", None) or f"{id(result):x}")


def live_class(token: str) -> str:
    """CSS class the live widget gallery of run ``token`` carries."""
    return f"nbdist-live-{token}"


def static_class(token: str) -> str:
    """CSS class the static copy of run ``token`` carries."""
    return f"nbdist-static-{token}"


_STYLE = (
    ".nbdist-static{font-family:system-ui,sans-serif;font-size:12px}"
    ".nbdist-static .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px}"
    ".nbdist-static figure{margin:0!important;width:auto!important;border:1px solid #ddd;border-radius:6px;"
    "padding:4px;background:#fafafa}"
    ".nbdist-static img{width:100%;height:auto;display:block;border-radius:4px}"
    ".nbdist-static figcaption{margin-top:4px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
    ".nbdist-static small{color:#666}"
    ".nbdist-static .err{color:#b00020;white-space:pre-wrap;overflow-wrap:anywhere}"
)

_FIGURE_STYLE = "display:inline-block;vertical-align:top;width:180px;margin:4px;font-size:12px"


def fallback_class(token: str) -> str:
    """CSS class the text progress of run ``token`` carries (shown only where the live gallery is not)."""
    return f"nbdist-fallback-{token}"


def _fallback_rules(token: str) -> str:
    """Rules that show the text progress only while this run has neither a live gallery nor a static copy.

    1. hidden once the live gallery of the run is drawn in an earlier output of the cell;
    2. hidden once the static copy (the cell's ``Out[]``) follows it;
    3. the output right before it (the widget's, published just before) is hidden while it holds no
       live gallery: "Loading widget...", "model not found" or an empty widget area say nothing useful.
    """
    live, static, fallback = live_class(token), static_class(token), fallback_class(token)
    child = ".jp-OutputArea-child"
    return (
        f"{child}:has(.{live})~{child}:has(.{fallback}){{display:none}}"
        f"{child}:has(.{fallback}):has(~{child} .{static}){{display:none}}"
        f"{child}:has(+{child} .{fallback}):not(:has(.{live})){{display:none}}"
    )


def fallback_html(token: str, lines: Iterable[str], *, title: str = "", hidden: bool = False) -> str:
    """The run's progress as a few lines of text, for a cell whose live gallery cannot be drawn.

    JupyterLab can leave a notebook with a kernel connection that ignores every widget message (Run All
    clicked while the kernel was still starting: the second connection it opens does not handle comms),
    and a front end without the widget extension never draws it; the display updates that carry this
    text reach the cell either way. Where the live gallery is drawn, a CSS rule hides it. ``hidden``:
    the run is over; the rules stay (the widget's placeholder stays hidden), the text goes.
    """
    body = "".join(f"<div>{html.escape(line)}</div>" for line in lines)
    head = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return (
        f'<div class="nbdist-fallback {fallback_class(token)}"{" hidden" if hidden else ""} '
        f'style="font-family:system-ui,sans-serif;font-size:12px;line-height:1.5">'
        f"<style>{_fallback_rules(token)}</style>{head}{body}</div>"
    )


def _pairing_rules(token: str) -> str:
    """The two rules that keep exactly one gallery visible per run (see the module docstring).

    ``.jp-OutputArea-child`` is the output wrapper of JupyterLab, Notebook 7 and nbconvert's lab
    template; elsewhere the rules match nothing and the static copy simply shows.
    """
    live, static = live_class(token), static_class(token)
    child = ".jp-OutputArea-child"
    return (
        f"{child}:has(.{live})~{child}:has(.{static}){{display:none}}"
        f"{child}:has(~{child} .{static}):has(.jupyter-widgets):not(:has(.{live})){{display:none}}"
    )


def render_gallery(tiles: Iterable[StaticTile], heading: str = "", *, token: str = "") -> str:
    """HTML for a grid of captioned images; the heading is a one-line summary of the run.

    ``token`` (from ``result_token``) tags the copy of a notebook run so it can pair with the live
    gallery; ``index.html`` leaves it empty.
    """
    classes = "nbdist-static" + (f" {static_class(token)}" if token else "")
    style = _STYLE + (_pairing_rules(token) if token else "")
    parts = [f'<div class="{classes}"><style>{style}</style>']
    if heading:
        parts.append(f"<p>{html.escape(heading)}</p>")
    parts.append('<div class="grid">')
    for tile in tiles:
        title = html.escape(tile.title, quote=True)
        body = (
            f'<img src="{html.escape(tile.src, quote=True)}" alt="{title}" loading="lazy" style="width:100%">'
            if tile.src
            else f'<div class="err" style="color:#b00020">{html.escape(tile.error or "not generated")}</div>'
        )
        if tile.href and tile.src:
            body = f'<a href="{html.escape(tile.href, quote=True)}">{body}</a>'
        detail = f"{'<br>' if tile.caption else ''}<small>{html.escape(tile.detail)}</small>" if tile.detail else ""
        parts.append(
            f'<figure title="{title}" style="{_FIGURE_STYLE}">{body}'
            f"<figcaption>{html.escape(tile.caption)}{detail}</figcaption></figure>"
        )
    parts.append("</div></div>")
    return "".join(parts)


def image_detail(
    index: int,
    seed: int,
    rank: int | None,
    device: str | None,
    seconds: float | None,
    device_format: str = " ({})",
    params: str = "",
) -> str:
    """A caption's second line, one format for live tiles and the static copy.

    E.g. ``#3 · seed 3 · worker 0 (cpu) · 1.2 s``.
    """
    parts = [*([params] if params else []), f"#{index}", f"seed {seed}"]
    if rank is not None:
        parts.append(f"worker {rank}" + (device_format.format(device) if device else ""))
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return " · ".join(parts)


def _detail(record: Any) -> str:
    from .grid import value_text

    params = value_text(getattr(record, "params", {}) or {})
    detail = image_detail(record.index, record.seed, record.rank, record.device, record.seconds, params=params)
    note = getattr(record, "note", None)
    return f"{detail} · {note}" if note else detail


INLINE_CAP = 240  # thumbnails a static copy inlines at most
INLINE_BYTES = 2_500_000  # and JPEG bytes (3.3 MB as base64): a 5,000-image cell keeps a notebook under 10 MB


def inlined(thumbnails: Sequence[tuple[int, bytes | None]]) -> set[int]:
    """Which of ``(index, thumbnail)`` (in prompt order) a static copy inlines: the first, within the caps."""
    chosen: set[int] = set()
    total = 0
    for index, thumb in thumbnails:
        if not thumb:
            continue
        total += len(thumb)
        if len(chosen) >= INLINE_CAP or total > INLINE_BYTES:
            break
        chosen.add(index)
    return chosen


def result_html(result: Any) -> str:
    """The static gallery of a ``GenerationResult``: the first thumbnails inline (``inlined``), in prompt order.

    Jobs that never finished get a tile saying so (and that the run was stopped, if it was), so a
    partial run shows exactly what it lacks. Past the caps the copy links the run folder's
    ``index.html`` (every image is on disk): the notebook stays small whatever the run's size.
    """
    missing = "not generated (stopped)" if getattr(result, "interrupted", False) else "not generated"
    records = sorted(result.records, key=lambda r: r.index)
    shown = inlined([(r.index, getattr(r, "thumbnail", None)) for r in records])
    cut = len(shown) < sum(1 for r in records if r.ok)
    tiles: dict[int, StaticTile] = {}
    for record in records:
        thumb = getattr(record, "thumbnail", None) if record.index in shown else None
        past = cut and record.ok and not thumb
        tiles[record.index] = StaticTile(
            src=data_uri(thumb) if thumb else None,
            caption=record.prompt,
            title=record.prompt,
            error=record.error or (None if thumb else "in the run folder" if past else "no thumbnail"),
            detail=_detail(record),
        )
    for job in result.missing:
        detail = f"#{job.index} · seed {job.seed}"
        tiles[job.index] = StaticTile(src=None, caption=job.prompt, title=job.prompt, error=missing, detail=detail)
    sweep = getattr(result.options, "sweep", None)
    more = _more_link(result, len(tiles) - len(shown)) if cut else ""
    if cut and not sweep:  # a sweep's tables keep every cell (small without images); a flat grid stops here
        last = max(shown, default=-1)
        tiles = {i: t for i, t in tiles.items() if i <= last}
    return static_copy(tiles, result.summary(), result_token(result), getattr(result, "jobs", None), sweep) + more


def _more_link(result: Any, left_out: int) -> str:
    """The line under a capped copy: how many images it leaves out and where they all are."""
    folder = getattr(result, "save_dir", None)
    if folder is None:
        return f'<p class="nbdist-more">{left_out} more images not shown here.</p>'
    href = _relative(Path(folder) / "index.html")
    return (
        f'<p class="nbdist-more">{left_out} more images: all of them in '
        f'<a href="{html.escape(href, quote=True)}" target="_blank">{html.escape(href)}</a></p>'
    )


def _relative(path: Path) -> str:
    """``path`` relative to the working folder (the notebook's) when under it: the link follows the notebook."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def static_copy(
    tiles: dict[int, StaticTile],
    heading: str,
    token: str,
    jobs: Sequence[Any] | None = None,
    sweep: dict[str, list[Any]] | None = None,
) -> str:
    """The static copy of a run from its tiles by image index: a grid in prompt order, or a sweep's tables.

    One renderer for a finished run (``result_html``) and a background run still going (the gallery
    builds the tiles it has so far), so both look the same in a saved notebook.
    """
    if sweep and jobs:
        return _sweep_html(heading, token, jobs, sweep, tiles)
    return render_gallery([tiles[i] for i in sorted(tiles)], heading=heading, token=token)


def _sweep_html(
    heading: str, token: str, jobs: Sequence[Any], sweep: dict[str, list[Any]], tiles: dict[int, StaticTile]
) -> str:
    """A sweep's static copy: a table per grid, column headers and row labels, each cell a tile.

    Where the row label is the prompt, the tile's caption leaves it out (it would say it again).
    """
    from .grid import layout

    parts = [f'<div class="nbdist-static {static_class(token)}"><style>{_STYLE}{_pairing_rules(token)}</style>']
    parts.append(f"<p>{html.escape(heading)}</p>")
    for grid in layout(jobs, sweep):
        if grid.heading:
            parts.append(f'<h4 class="nbdist-grid-heading">{html.escape(grid.heading)}</h4>')
        head = "".join(f'<th scope="col">{html.escape(c)}</th>' for c in grid.columns)
        parts.append(f'<table class="nbdist-grid"><tr><th></th>{head}</tr>')
        for label, row in zip(grid.rows, grid.cells, strict=False):
            cells = "".join(f"<td>{_cell(tiles.get(i), grid.prompt_rows)}</td>" for i in row)
            parts.append(f'<tr><th scope="row">{html.escape(label)}</th>{cells}</tr>')
        parts.append("</table>")
    parts.append("</div>")
    return "".join(parts)


def _cell(tile: StaticTile | None, prompt_rows: bool) -> str:
    """One sweep table cell: the tile, without the prompt in its caption where the row label has it."""
    if tile is None:
        return ""
    return render_gallery([replace(tile, caption="") if prompt_rows else tile])
