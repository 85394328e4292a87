"""A self-contained HTML gallery: what a saved notebook, nbconvert, GitHub or ``index.html`` shows.

Widgets need a live kernel or saved widget state to render; plain HTML with inline (or linked)
images renders everywhere. Every string that comes from a prompt is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["StaticTile", "data_uri", "render_gallery"]


@dataclass(frozen=True)
class StaticTile:
    """One tile: an image source (data URI or relative path), a caption, and an optional error."""

    src: str | None
    caption: str
    title: str
    error: str | None = None
    href: str | None = None


def data_uri(jpeg: bytes) -> str:
    """Inline JPEG bytes as a ``data:`` URI."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


_STYLE = (
    ".nbdist-static{font-family:system-ui,sans-serif;font-size:12px}"
    ".nbdist-static .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px}"
    ".nbdist-static figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:4px;background:#fafafa}"
    ".nbdist-static img{width:100%;height:auto;display:block;border-radius:4px}"
    ".nbdist-static figcaption{margin-top:4px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
    ".nbdist-static .err{color:#b00020;white-space:pre-wrap}"
)


def render_gallery(tiles: Iterable[StaticTile], heading: str = "") -> str:
    """HTML for a grid of captioned images; the heading is a one-line summary of the run."""
    parts = [f'<div class="nbdist-static"><style>{_STYLE}</style>']
    if heading:
        parts.append(f"<p>{html.escape(heading)}</p>")
    parts.append('<div class="grid">')
    for tile in tiles:
        title = html.escape(tile.title, quote=True)
        body = (
            f'<img src="{html.escape(tile.src, quote=True)}" alt="{title}" loading="lazy">'
            if tile.src
            else f'<div class="err">{html.escape(tile.error or "not generated")}</div>'
        )
        if tile.href and tile.src:
            body = f'<a href="{html.escape(tile.href, quote=True)}">{body}</a>'
        parts.append(f'<figure title="{title}">{body}<figcaption>{html.escape(tile.caption)}</figcaption></figure>')
    parts.append("</div></div>")
    return "".join(parts)
