"""Warn, once per run and before anything starts, about prompts the text encoder will cut short.

CLIP-based pipelines keep 77 tokens; diffusers logs what it drops, but inside a worker whose logs are
silenced. The kernel has the pipeline's tokenizer, so it counts here instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["truncation_warning"]


def _too_long(tokenizer: Any, limit: int, prompt: str) -> bool:
    # Every token covers at least one UTF-8 byte, plus the start and end tokens: shorter prompts fit.
    if len(prompt.encode("utf-8")) + 2 <= limit:
        return False
    return len(tokenizer(prompt, truncation=False, verbose=False).input_ids) > limit


def truncation_warning(pipe: Any, prompts: Sequence[str], syntax: str = "plain") -> str | None:
    """One line naming the prompts longer than the tokenizer's limit, or None if all fit.

    With ``--prompt-syntax weighted`` (the default) CLIP families (SD1.x, SDXL) take long prompts whole
    (compel, in chunks): nothing is cut, so there is nothing to warn about (unless compel is missing).
    """
    from ...prompt_syntax import compel_installed, family

    if syntax == "weighted" and family(pipe) is not None and compel_installed():
        return None
    tokenizer = getattr(pipe, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not isinstance(limit, int) or limit > 100_000:
        return None
    long = [i for i, p in enumerate(prompts) if _too_long(tokenizer, limit, p)]
    if not long:
        return None
    shown = ", ".join(f"#{i}" for i in long[:5]) + (f" and {len(long) - 5} more" if len(long) > 5 else "")
    return (
        f"nbdist: {len(long)} prompt(s) longer than the text encoder's {limit} tokens will be truncated "
        f"(prompt {shown})"
    )
