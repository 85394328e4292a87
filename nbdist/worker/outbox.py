"""Send finished images to the parent off the denoising loop.

Turning a PIL image into raw bytes plus a JPEG thumbnail, then pickling it into the queue, costs a few
milliseconds per image; done in a background thread it overlaps with the next image's denoising
instead of delaying it.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Any

from ..messages import ImageReady, Message

__all__ = ["Outbox", "thumbnail_jpeg"]


def thumbnail_jpeg(image: Any, max_side: int) -> bytes:
    """A JPEG no larger than ``max_side`` on its longest side: what the gallery tile shows."""
    thumb = image.convert("RGB")
    if max(thumb.size) > max_side:
        thumb = thumb.copy()
        thumb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


class Outbox:
    """A single sender thread between the worker loop and the multiprocessing queue.

    Messages keep their order (one thread, one FIFO). ``close`` waits until everything has been
    handed to the queue, so the worker's final message always arrives after its images.
    """

    def __init__(self, out: Any, thumbnail_size: int) -> None:
        self._out = out
        self._thumbnail_size = thumbnail_size
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="nbdist-outbox", daemon=True)
        self._thread.start()

    def send(self, message: Message) -> None:
        """Queue a ready-made message."""
        self._pending.put(message)

    def send_image(
        self, index: int, rank: int, device: str, seconds: float, image: Any, note: str | None = None
    ) -> None:
        """Queue a PIL image; it is converted in the sender thread."""
        self._pending.put((index, rank, device, seconds, image, note))

    def close(self) -> None:
        """Flush and stop the sender thread."""
        self._pending.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._pending.get()) is not None:
            if isinstance(item, tuple):
                index, rank, device, seconds, image, note = item
                item = ImageReady(
                    index=index,
                    rank=rank,
                    device=device,
                    seconds=seconds,
                    mode=image.mode,
                    size=image.size,
                    pixels=image.tobytes(),
                    thumbnail=thumbnail_jpeg(image, self._thumbnail_size),
                    note=note,
                )
            self._out.put(item)
