"""A pipeline whose prompts carry their own image size, to give jobs of unequal cost.

nbdist's options set one height and width per run. To measure ``--schedule dynamic`` against the
static split on jobs of unequal cost, the benchmark wraps the real pipeline: a prompt ending in
``[HxW]`` is generated at that size. Everything else is the real ``StableDiffusionPipeline``, handed
to ``%%distgen --pipe`` like any user's pipeline object.
"""

from __future__ import annotations

import re
from typing import Any

from diffusers import StableDiffusionPipeline

__all__ = ["MixedSizePipeline", "tag"]

_TAG = re.compile(r"\s*\[(\d+)x(\d+)\]$")


def tag(prompt: str, height: int, width: int) -> str:
    """``prompt`` asking for a ``height`` x ``width`` image."""
    return f"{prompt} [{height}x{width}]"


class MixedSizePipeline(StableDiffusionPipeline):
    """``StableDiffusionPipeline`` reading ``[HxW]`` at the end of each prompt (one size per call)."""

    def __call__(self, prompt: Any = None, **kwargs: Any) -> Any:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sizes = {m.groups() if (m := _TAG.search(p)) else None for p in prompts}
        if len(sizes) != 1:
            raise ValueError(f"one size per call, got {sizes}")
        size = sizes.pop()
        if size is not None:
            kwargs["height"], kwargs["width"] = int(size[0]), int(size[1])
        return super().__call__(prompt=[_TAG.sub("", p) for p in prompts], **kwargs)
