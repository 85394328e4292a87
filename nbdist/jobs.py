"""Image jobs: the unit of work, numbered once in prompt order so results never depend on ``-n``.

Image ``i`` (a prompt's ``K`` images consecutive) is generated from its own CPU generator seeded with
``seed + i``. That makes every image reproducible on its own, identical whatever the number of
workers, the batch size or the schedule, and equal to a plain ``pipe(prompt, generator=...)`` call.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ImageJob", "make_jobs"]


@dataclass(frozen=True)
class ImageJob:
    """One image to make: its global index, its prompt (and the prompt's position) and its seed."""

    index: int
    prompt_index: int
    prompt: str
    seed: int
    params: tuple[tuple[str, Any], ...] = ()  # this image's sweep values, in axis order
    k: int = 0  # which of its prompt's images (0 .. K-1)

    @property
    def settings(self) -> dict[str, Any]:
        """The sweep values of this image, e.g. ``{"guidance": 4.0, "steps": 3}``."""
        return dict(self.params)


def make_jobs(
    prompts: Sequence[str], images_per_prompt: int, seed: int, sweep: Mapping[str, Sequence[Any]] | None = None
) -> list[ImageJob]:
    """Number the images in prompt order: prompt ``p``'s images, then the sweep's combinations (first axis fastest).

    Without a sweep image ``i`` is prompt ``i // K``'s image ``i % K`` with seed ``seed + i``. A sweep
    keeps that seed for every combination of other values (``seed + p*K + k``), so images that differ
    only in swept values are comparable; a swept ``seed`` sets it (``value + k``).
    """
    axes = list((sweep or {}).items())
    names = [name for name, _ in axes]
    combos = [tuple(reversed(c)) for c in itertools.product(*(values for _, values in reversed(axes)))]
    jobs: list[ImageJob] = []
    for p, prompt in enumerate(prompts):
        for k in range(images_per_prompt):
            base = seed + p * images_per_prompt + k
            for combo in combos:
                params = tuple(zip(names, combo, strict=True))
                own = dict(params).get("seed")
                image_seed = base if own is None else int(own) + k
                jobs.append(ImageJob(len(jobs), p, prompt, image_seed, params, k))
    return jobs
