"""What a finished image costs a worker to hand over, by image size: the "encoding off the critical path" lever.

The recipes save a PNG (zlib level 6) in the generation loop. An nbdist worker instead puts the PIL
image on its sender thread, which makes raw pixels + a 256 px JPEG thumbnail and pickles them into the
queue while the next image denoises. This measures both costs in this process on synthetic noise-free
images (a smooth gradient, like a decoded latent), a few repetitions each, median.
"""

from __future__ import annotations

import io
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["encoding_table"]


def _image(side: int) -> Any:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    rgb = np.stack([(x * 255 // side), (y * 255 // side), ((x + y) * 127 // side)], axis=-1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 8, size=rgb.shape, dtype=np.uint8)
    return Image.fromarray(rgb + noise)


def _median_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _png(image: Any) -> None:
    image.save(io.BytesIO(), format="PNG")


def _handover(image: Any) -> None:
    from nbdist.messages import ImageReady
    from nbdist.worker.outbox import thumbnail_jpeg

    msg = ImageReady(0, 0, "cpu", 0.0, image.mode, image.size, image.tobytes(), thumbnail_jpeg(image, 256))
    pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


def encoding_table(sides: tuple[int, ...] = (128, 512, 1024)) -> str:
    """Markdown rows: PNG save (the recipes, on the loop) vs nbdist's hand-over (on the sender thread)."""
    lines = [
        "| image side px | PNG save ms (recipes, in the loop) "
        "| raw bytes + 256 px JPEG + pickle ms (nbdist sender thread) |",
        "|---|---|---|",
    ]
    for side in sides:
        image = _image(side)

        png = _median_ms(lambda im=image: _png(im))
        handover = _median_ms(lambda im=image: _handover(im))
        lines.append(f"| {side} | {png:.1f} | {handover:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(encoding_table())
