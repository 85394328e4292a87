"""Weighted and long prompts in a worker: compel's embeddings from the pipeline's own CLIP encoders.

Only a batch that needs it goes through compel: a prompt with A1111 brackets, or one longer than the
tokenizer's 77 tokens (compel encodes it in 77-token chunks and concatenates them, as A1111 does, where
diffusers would cut it). Every other batch is passed to the pipeline as text, exactly as before, so
plain prompts make the same images as a plain diffusers call. The negative prompt goes through compel
with the prompt, padded to the same length (the two are stacked for classifier-free guidance).
"""

from __future__ import annotations

from typing import Any

from ..prompt_syntax import a1111_to_compel, compel_installed, family, has_weights

__all__ = ["needs_compel", "prompt_embeddings"]


def _too_long(pipe: Any, prompt: str) -> bool:
    tokenizer = pipe.tokenizer
    limit = getattr(tokenizer, "model_max_length", 77)
    if len(prompt.encode("utf-8")) + 2 <= limit:  # each token covers at least one byte: shorter ones fit
        return False
    return len(tokenizer(prompt, truncation=False, verbose=False).input_ids) > limit


def needs_compel(pipe: Any, prompts: list[str], negative: str | None, syntax: str) -> bool:
    """Whether this batch's prompts must be encoded by compel (weights or length, on a CLIP family)."""
    if syntax != "weighted" or family(pipe) is None or not compel_installed():
        return False
    texts = [*prompts, *([negative] if negative else [])]
    return any(has_weights(t) or _too_long(pipe, t) for t in texts)


def prompt_embeddings(pipe: Any, prompts: list[str], negative: str | None) -> dict[str, Any]:
    """The call arguments (``prompt_embeds`` & co.) for ``prompts`` and the negative prompt, made by compel."""
    from compel import CompelForSD, CompelForSDXL

    device = getattr(pipe, "_execution_device", None)
    negatives = [a1111_to_compel(negative or "")] * len(prompts)
    texts = [a1111_to_compel(p) for p in prompts]
    if family(pipe) == "sdxl":
        out = CompelForSDXL(pipe, device=device)(texts, negative_prompt=negatives)
        return {
            "prompt_embeds": out.embeds,
            "pooled_prompt_embeds": out.pooled_embeds,
            "negative_prompt_embeds": out.negative_embeds,
            "negative_pooled_prompt_embeds": out.negative_pooled_embeds,
        }
    out = CompelForSD(pipe, device=device)(texts, negative_prompt=negatives)
    return {"prompt_embeds": out.embeds, "negative_prompt_embeds": out.negative_embeds}
