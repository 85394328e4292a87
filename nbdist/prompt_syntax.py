"""Weighted prompts in A1111 syntax, handed to compel in compel's syntax; which pipelines they apply to.

Why a translator: compel (the maintained library nbdist uses for weighted and long prompts) has its own
syntax, ``(word)1.3`` / ``word++``, and no parser for A1111's ``(word:1.3)`` / ``(word)`` / ``[word]``,
the syntax most prompts on the web are written in. Rewriting the brackets is all it takes; the parsing
of the result, the weighting and the chunking of long prompts stay compel's. The weighting maths is
compel's too, so an image is not the one A1111 would draw for the same prompt, only its intent.

Imported by the kernel (notes before a run) and the workers; imports neither IPython nor torch.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

__all__ = ["a1111_to_compel", "compel_installed", "family", "has_weights", "weighting_note"]

_WEIGHTED = re.compile(r"(?<!\\)[()\[\]]")
_EXPLICIT = re.compile(r"^(.*?):\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$", re.DOTALL)
UP = 1.1  # A1111: (word) is word at 1.1, [word] at 1/1.1, nested brackets multiply


def has_weights(prompt: str) -> bool:
    """Whether a prompt has A1111 brackets (not escaped): only such prompts go through the weighting."""
    return bool(_WEIGHTED.search(prompt))


def a1111_to_compel(prompt: str) -> str:
    """``a (red:1.3) [blurry] (fox)`` → ``a (red)1.3 (blurry)0.9091 (fox)1.1``; escapes ``\\(`` kept.

    Unbalanced brackets are kept as literal (escaped) characters rather than guessed at.
    """
    frames: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(prompt):
        char = prompt[i]
        if char == "\\" and i + 1 < len(prompt):
            frames[-1][1].append(prompt[i : i + 2])
            i += 2
            continue
        if char in "([":
            frames.append((char, []))
        elif char in ")]" and frames[-1][0] == {")": "(", "]": "["}[char]:
            opener, parts = frames.pop()
            frames[-1][1].append(_weighted(opener, "".join(parts)))
        else:
            frames[-1][1].append("\\" + char if char in "()[]" else char)
        i += 1
    while len(frames) > 1:  # unclosed: the bracket was text
        opener, parts = frames.pop()
        frames[-1][1].append("\\" + opener + "".join(parts))
    return "".join(frames[0][1])


def _weighted(opener: str, inner: str) -> str:
    """One bracket group in compel's syntax."""
    match = _EXPLICIT.match(inner) if opener == "(" else None
    if match:
        return f"({match.group(1)}){float(match.group(2)):g}"
    weight = UP if opener == "(" else 1 / UP
    return f"({inner}){weight:.4g}"


def compel_installed() -> bool:
    """compel is an extra (``nbdist[prompts]``): without it prompts are passed as written."""
    return importlib.util.find_spec("compel") is not None


def family(pipe: Any) -> str | None:
    """``"sd"`` or ``"sdxl"`` for pipelines whose CLIP encoders compel drives, else None (T5, Gemma, ...)."""
    names = {type(getattr(pipe, n, None)).__name__ for n in ("text_encoder", "text_encoder_2", "text_encoder_3")}
    if getattr(pipe, "text_encoder_3", None) is not None or getattr(pipe, "tokenizer", None) is None:
        return None
    if names >= {"CLIPTextModel", "CLIPTextModelWithProjection"} and hasattr(pipe, "tokenizer_2"):
        return "sdxl"
    if "CLIPTextModel" in names and getattr(pipe, "text_encoder_2", None) is None and hasattr(pipe, "encode_prompt"):
        return "sd"
    return None


def weighting_note(pipe: Any, prompts: list[str], syntax: str) -> str | None:
    """One line when weights were written for a pipeline they do not apply to (T5 and other encoders)."""
    if syntax != "weighted" or pipe is None or not any(map(has_weights, prompts)):
        return None
    if family(pipe) is not None:
        if compel_installed():
            return None
        return "nbdist: (word:1.3) weighting and long prompts need compel: pip install 'nbdist[prompts]'"
    return (
        f"nbdist: {type(pipe).__name__} encodes prompts with a T5 or other non-CLIP encoder: (word:1.3) weighting "
        "does not apply there and the brackets are passed as written (long prompts already work)"
    )
