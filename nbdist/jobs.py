"""Image jobs: the unit of work, numbered once in prompt order so results never depend on ``-n``.

Image ``i`` (a prompt's ``K`` images consecutive) is generated from its own CPU generator seeded with
``seed + i``. That makes every image reproducible on its own, identical whatever the number of
workers, the batch size or the schedule, and equal to a plain ``pipe(prompt, generator=...)`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ImageJob", "make_jobs"]


@dataclass(frozen=True)
class ImageJob:
    """One image to make: its global index, its prompt (and the prompt's position) and its seed."""

    index: int
    prompt_index: int
    prompt: str
    seed: int


def make_jobs(prompts: Sequence[str], images_per_prompt: int, seed: int) -> list[ImageJob]:
    """Number the images in prompt order: prompt ``p``'s images are ``p*K .. p*K+K-1``."""
    jobs: list[ImageJob] = []
    for p, prompt in enumerate(prompts):
        for _ in range(images_per_prompt):
            i = len(jobs)
            jobs.append(ImageJob(index=i, prompt_index=p, prompt=prompt, seed=seed + i))
    return jobs
