"""Send finished images to the parent off the denoising loop, after doing the per-image work here.

Per image: a JPEG thumbnail, and either the PNG written to the run's folder (the kernel receives only
its path), the PNG encoded as bytes (the kernel writes them), or raw pixels (``--no-save``), as the
run's ``SaveTarget`` says (``messages.py``). That costs tens of milliseconds for a large image; done on
this background thread it overlaps with the next image's denoising instead of delaying it (PIL
releases the GIL while it compresses), and the kernel's cost per image stays the same whatever the
image size.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

from ..image_files import encode_png, file_name, image_metadata, thumbnail_jpeg, write_atomically
from ..jobs import ImageJob
from ..messages import ImageReady, Message, SaveTarget

__all__ = ["Outbox", "thumbnail_jpeg"]


class Outbox:
    """A single sender thread between the worker loop and the multiprocessing queue.

    Messages keep their order (one thread, one FIFO). ``close`` waits until everything has been
    handed to the queue, so the worker's final message always arrives after its images.

    ``save`` is where images go (``SaveTarget``, or None to send raw pixels); code that makes its own
    workers (e.g. Ray actors, which cannot write the kernel's disk: ``SaveTarget(None, params)``) passes
    it here, and a warm worker changes it per run with ``use`` (each ``RunCommand`` carries its own).
    """

    def __init__(self, out: Any, thumbnail_size: int, save: SaveTarget | None) -> None:
        self._out = out
        self._thumbnail_size = thumbnail_size
        self._save = save
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="nbdist-outbox", daemon=True)
        self._thread.start()

    def use(self, save: SaveTarget | None) -> None:
        """Images sent from now on go to ``save`` (those already queued keep theirs)."""
        self._save = save

    def send(self, message: Message) -> None:
        """Queue a ready-made message."""
        self._pending.put(message)

    def send_image(
        self,
        job: ImageJob,
        rank: int,
        device: str,
        seconds: float,
        image: Any,
        note: str | None = None,
        skipped_steps: int | None = None,
    ) -> None:
        """Queue a PIL image; it is encoded (and written) in the sender thread."""
        self._pending.put((job, rank, device, seconds, image, note, self._save, skipped_steps))

    def close(self) -> None:
        """Flush and stop the sender thread."""
        self._pending.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._pending.get()) is not None:
            self._out.put(self._ready(*item) if isinstance(item, tuple) else item)

    def _ready(
        self,
        job: ImageJob,
        rank: int,
        device: str,
        seconds: float,
        image: Any,
        note: str | None,
        save: Any,
        skipped: int | None,
    ) -> ImageReady:
        """The message for one image, after writing or encoding its PNG as ``save`` says."""
        thumbnail = thumbnail_jpeg(image, self._thumbnail_size)
        common = (job.index, rank, device, seconds, image.mode, image.size)
        if save is None:
            return ImageReady(*common, image.tobytes(), thumbnail, note, skipped_steps=skipped)
        meta = image_metadata(
            save.params, job, size=image.size, rank=rank, device=device, seconds=seconds, note=note, skipped=skipped
        )
        png = encode_png(image, meta)
        if save.folder is None:
            return ImageReady(*common, None, thumbnail, note, png=png, skipped_steps=skipped)
        path = Path(save.folder) / file_name(job)
        write_atomically(path, png)
        return ImageReady(*common, None, thumbnail, note, path=str(path), skipped_steps=skipped)
