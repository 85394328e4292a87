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
        pooled, negative_pooled = _pooled(pipe, texts, negatives if negative is not None else None, device)
        return {
            "prompt_embeds": out.embeds,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": _negative(pipe, out.embeds, out.negative_embeds, negative),
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    out = CompelForSD(pipe, device=device)(texts, negative_prompt=negatives)
    return {"prompt_embeds": out.embeds, "negative_prompt_embeds": out.negative_embeds}


def _negative(pipe: Any, embeds: Any, negative_embeds: Any, negative: str | None) -> Any:
    """No ``--negative`` on a pipeline with ``force_zeros_for_empty_prompt`` (SDXL's config): zeros, as
    diffusers sends, not the embedding of "" (which changed the whole picture once one word had a weight)."""
    if negative is None and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        import torch

        return torch.zeros_like(embeds)
    return negative_embeds


def _pooled(pipe: Any, texts: list[str], negatives: list[str] | None, device: Any) -> tuple[Any, Any]:
    """The pooled embeddings, by the pipeline's own ``encode_prompt`` from the text without weight syntax.

    compel encodes the pooled embedding from the raw prompt, brackets and numbers included ("a (cat)1.0"):
    a weight of 1.0 changed the picture. A pooled embedding cannot carry weights, so it is the plain text's,
    exactly as diffusers makes it (zeros for no negative where the config says so).
    """
    plain = [_plain_text(t) for t in texts]
    plain_negatives = [_plain_text(t) for t in negatives] if negatives is not None else None
    _, _, pooled, negative_pooled = pipe.encode_prompt(
        prompt=plain, negative_prompt=plain_negatives, device=device, num_images_per_prompt=1,
        do_classifier_free_guidance=True,
    )  # fmt: skip
    return pooled, negative_pooled


def _plain_text(text: str) -> str:
    """A prompt in compel's syntax as the words it weights, without the syntax: compel's own parse."""
    from compel import Compel

    words: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(getattr(node, "text", None), str):
            words.append(node.text)
        for child in getattr(node, "children", None) or getattr(node, "prompts", None) or []:
            collect(child)

    collect(Compel.parse_prompt_string(text))
    return " ".join(w.strip() for w in words if w.strip())
