"""What every benchmark scenario shares: the prompts, the seeds, the event log, the memory sampler.

Every scenario makes image ``i`` from ``torch.Generator("cpu").manual_seed(SEED + i)`` with the same
prompts, steps and guidance, exactly as nbdist does, so all of them must produce the same pixels; the
runner checks that, so a fast scenario cannot be fast by doing something else.

Scenario scripts are run as separate processes (a fresh interpreter each, as a user would run them);
they report through a small JSON "event log" written at the end: when each image was saved (wall
clock, ``time.time()``, comparable across processes) and a few phase durations.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "GUIDANCE",
    "SEED",
    "EventLog",
    "PssSampler",
    "benchmark_prompts",
    "contiguous_share",
    "device_and_dtype",
    "save_png",
    "tree_pss",
]

SEED = 1234
GUIDANCE = 7.5

_SUBJECTS = (
    "a red fox in the snow",
    "a lighthouse at dusk",
    "a bowl of ramen, studio photo",
    "an astronaut riding a horse",
    "a watercolor of a mountain lake",
    "a cyberpunk street at night",
    "a cat wearing a tiny hat",
    "an old map of an imaginary island",
    "a macro photo of a dew drop",
    "a medieval castle on a cliff",
    "a vintage car in the desert",
    "a field of sunflowers, oil painting",
)


def benchmark_prompts(count: int) -> list[str]:
    """``count`` distinct prompts (the subjects, numbered when repeated)."""
    return [
        _SUBJECTS[i % len(_SUBJECTS)] + (f", variation {i // len(_SUBJECTS)}" if i >= len(_SUBJECTS) else "")
        for i in range(count)
    ]


def contiguous_share(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s contiguous share, sized like accelerate's ``split_between_processes``."""
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (1 if rank < extra else 0)])


def device_and_dtype(device: str) -> tuple[str, Any]:
    """``auto`` → cuda (fp16) when a GPU is there, else cpu (fp32): what nbdist picks."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, (torch.float16 if device.startswith("cuda") else torch.float32)


def save_png(image: Any, out_dir: Path, index: int) -> Path:
    """Save as the recipes do (PNG), named by the global image index so scenarios can be compared."""
    path = out_dir / f"{index:04d}.png"
    image.save(path)
    return path


@dataclass
class EventLog:
    """Timestamps one scenario process records; written as JSON when the process is done."""

    path: Path
    started: float = field(default_factory=time.time)
    images: dict[int, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    def image_done(self, index: int) -> None:
        self.images[index] = time.time()

    def phase(self, name: str, seconds: float) -> None:
        self.phases[name] = seconds

    def write(self) -> None:
        data = {"pid": os.getpid(), "started": self.started, "images": self.images, "phases": self.phases}
        self.path.write_text(json.dumps(data), encoding="utf-8")


def _tree(root: Any) -> list[Any]:
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_pss(root_pid: int) -> int:
    """Proportional set size (bytes) summed over a process and all its descendants, right now.

    PSS divides each shared page among the processes mapping it, so pages shared by fork (the weights,
    the imported libraries) are counted once in the sum, and private copies are counted in full.
    """
    import psutil

    total = 0
    try:
        root = psutil.Process(root_pid)
    except psutil.NoSuchProcess:
        return 0
    for proc in _tree(root):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            total += proc.memory_full_info().pss
    return total


class PssSampler:
    """Samples ``tree_pss`` of a process tree on a thread; ``peak`` is the largest sum seen.

    The interval is a trade-off on a 2-core machine: reading smaps_rollup makes the kernel walk the
    page tables, ~5-9 ms per torch process here, CPU the benchmark itself needs (at 0.1 s and 4
    processes that was a third of a core); a coarse interval can miss a short peak, but the peaks here
    are plateaus (weights, libraries, activations) lasting the whole run.
    """

    def __init__(self, root_pid: int | Sequence[int], interval: float = 0.5) -> None:
        self._roots = [root_pid] if isinstance(root_pid, int) else list(root_pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)
        self.peak = 0
        self.samples = 0

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        """Forget the peak (between the phases of one long-lived process, e.g. notebook cells)."""
        self.peak = 0

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, sum(tree_pss(root) for root in self._roots))
            self.samples += 1
            if self._stop.wait(self._interval):
                return


def max_abs_diff(a: Iterable[Any], b: Iterable[Any]) -> int:
    """Largest per-channel difference (0..255) between two lists of same-size images."""
    import numpy as np

    worst = 0
    for x, y in zip(a, b, strict=True):
        worst = max(worst, int(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max()))
    return worst
