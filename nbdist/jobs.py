"""Image jobs: the unit of work, numbered once in prompt order so results never depend on ``-n``.

Image ``i`` (a prompt's ``K`` images consecutive) is generated from its own CPU generator seeded with
``seed + i``. That makes every image reproducible on its own, identical whatever the number of
workers, the batch size or the schedule, and equal to a plain ``pipe(prompt, generator=...)`` call.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .options import NbdistUsageError

__all__ = ["DEFAULT_VARIATION_STRENGTH", "ImageJob", "make_jobs", "prompt_lines", "read_prompts", "variation_of"]


def prompt_lines(lines: Iterable[str]) -> list[str]:
    """The one rule for prompt lists (cell bodies, prompt files, ``-p``): trimmed, blanks and ``#`` lines skipped."""
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def read_prompts(path: str | None, extra: Sequence[str] = ()) -> list[str]:
    """Prompts of a file (``-`` = stdin) then ``extra`` (``-p`` ones): the CLI's ``--prompts`` and the magic's."""
    lines: list[str] = []
    if path is not None:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise NbdistUsageError(f"--prompts {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise NbdistUsageError(f"--prompts {path}: not a UTF-8 text file") from None
        lines = text.splitlines()
    return prompt_lines([*lines, *extra])


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


# -- appended: variations (--variation-seed, worker/variations.py) ---------------------------------

DEFAULT_VARIATION_STRENGTH = 0.2  # a neighbour of the image: same layout and colours, details changed


def variation_of(job: ImageJob, call: Any) -> tuple[int, float] | None:
    """(variation seed, strength) of an image, or None: image ``i`` uses ``--variation-seed`` + ``i``;
    a swept ``variation_seed`` sets it (``value + k``), a swept ``variation_strength`` its strength."""
    settings = job.settings
    strength = settings.get("variation_strength", getattr(call, "variation_strength", None))
    if "variation_seed" in settings:
        seed = int(settings["variation_seed"]) + job.k
    elif getattr(call, "variation_seed", None) is not None:
        seed = int(call.variation_seed) + job.index
    else:
        return None
    return seed, float(DEFAULT_VARIATION_STRENGTH if strength is None else strength)
