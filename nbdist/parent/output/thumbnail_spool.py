"""The run's thumbnails kept on disk until ``index.html`` inlines them, so the kernel's memory stays flat.

``index.html`` shows each image as an inline ``data:`` JPEG rather than a link to its PNG: JupyterLab
opens the page in a sandboxed viewer (and serves it in a new tab with a sandboxing
Content-Security-Policy), whose requests for the PNGs next to it carry no login cookie and come back
as the login page, so every linked image was broken there. The workers' thumbnails (<= 256 px JPEG,
a few kB each) arrive with every image; they are appended to one hidden file in the run folder as
they come and read back once, when the index is written, then the file goes.
"""

from __future__ import annotations

import threading
from pathlib import Path

__all__ = ["ThumbnailSpool"]


class ThumbnailSpool:
    """Thumbnails by image index, appended to ``folder/.thumbnails.part``; only offsets stay in memory."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".thumbnails.part"
        self._spans: dict[int, tuple[int, int]] = {}  # index -> (offset, length)
        self._size = 0
        self._lock = threading.Lock()

    def add(self, index: int, jpeg: bytes) -> None:
        """Keep image ``index``'s thumbnail (a later one for the same index replaces it)."""
        if not jpeg:
            return
        with self._lock, open(self.path, "ab") as f:
            f.write(jpeg)
            self._spans[index] = (self._size, len(jpeg))
            self._size += len(jpeg)

    def read(self) -> dict[int, bytes]:
        """Every thumbnail kept, by index (empty if the file is gone)."""
        with self._lock:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                return {}
            return {index: data[start : start + length] for index, (start, length) in self._spans.items()}

    def discard(self) -> None:
        """Remove the file: the thumbnails are in ``index.html`` now."""
        with self._lock:
            self.path.unlink(missing_ok=True)
            self._spans.clear()
            self._size = 0
