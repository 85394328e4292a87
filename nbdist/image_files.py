"""Image files as both sides write them: names, the parameters in the PNG text chunk, atomic writes.

Why a module of its own: a forked worker writes its PNGs itself (it shares the kernel's disk), the
kernel writes the ones that arrive as bytes (workers on other machines) or as pixels (``--no-save``'s
download, the CLI under ``torchrun``), and the gallery's "Download PNG" makes one too. All of them must
carry the same name and the same text chunk, and worker code may not import the kernel's modules.
"""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from .jobs import ImageJob
from .sweep import value_label

__all__ = [
    "PNG_COMPRESS_LEVEL",
    "encode_png",
    "file_name",
    "image_metadata",
    "png_text",
    "slug",
    "thumbnail_jpeg",
    "write_atomically",
]

# zlib level 1: about 3x faster than PIL's default 6 for a few percent more bytes on rendered images
# (benchmarks/data_path.py); a fast model's images must be written as fast as they are made.
PNG_COMPRESS_LEVEL = 1


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe ASCII slug: no slashes, dots-only names or control characters, ever."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "image"


def file_name(job: ImageJob) -> str:
    """``00012-an-astronaut-riding-a-horse.png``: the index keeps prompt order and uniqueness."""
    return f"{job.index:05d}-{slug(job.prompt)}.png"


def image_metadata(
    params: dict[str, Any],
    job: ImageJob,
    *,
    size: tuple[int, int],
    rank: int | None,
    device: str | None,
    seconds: float | None,
    note: str | None = None,
    skipped: int | None = None,
) -> dict[str, Any]:
    """One image's parameters: the run's, its own (prompt, seed, swept values) and where it was made.

    One function for the saved PNGs, ``manifest.jsonl`` and the gallery's "Download PNG", so a file
    from either place carries the same text chunk.
    """
    width, height = size
    swept = {k: v for k, v in job.settings.items() if k not in ("size", "seed")}
    return {
        "index": job.index,
        "prompt": job.prompt,
        "seed": job.seed,
        **params,
        **swept,
        **({"sweep": {k: value_label(k, v) for k, v in job.params}} if job.params else {}),
        "height": height,
        "width": width,
        "rank": rank,
        "device": device,
        "seconds": None if seconds is None else round(seconds, 4),
        **({"note": note} if note else {}),
        **({"skipped_steps": skipped} if skipped is not None else {}),
    }


def png_text(meta: dict[str, Any]) -> Any:
    """The PNG text chunk for ``meta``: a tEXt per common key (what image tools show) and the JSON whole."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key in ("prompt", "negative", "seed", "steps", "guidance", "scheduler", "width", "height", "model"):
        if meta.get(key) is not None:
            info.add_text(key, str(meta[key]))
    info.add_itxt("nbdist", json.dumps(meta, ensure_ascii=False))
    return info


def encode_png(image: Any, meta: dict[str, Any] | None = None) -> bytes:
    """``image`` as PNG bytes (with ``meta`` in its text chunk when given)."""
    buf = io.BytesIO()
    info = png_text(meta) if meta is not None else None
    image.save(buf, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name, then rename: a file under its final name is always complete.

    A kernel or worker killed mid-write leaves at most a ``.png.part`` (which the next ``--overwrite`` removes).
    """
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def thumbnail_jpeg(image: Any, max_side: int) -> bytes:
    """A JPEG no larger than ``max_side`` on its longest side: what the gallery tile shows."""
    thumb = image.convert("RGB")
    if max(thumb.size) > max_side:
        thumb = thumb.copy()
        thumb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=88)
    return buf.getvalue()
