"""``--compile`` in a warm worker: the denoiser compiled once, kept for every later cell.

Regional compilation where the model names its repeated blocks (diffusers'
``ModelMixin.compile_repeated_blocks``: one block compiled, reused by its siblings, minutes of compile
become seconds), else the whole denoiser with ``torch.compile``. Done in place, in the worker that is
already warm: no new fork and no weight copy, and a later cell without ``--compile`` keeps the compiled
code (same images within float rounding) instead of losing it. torch compiles lazily, in the first call
with a given shape, so that call's time holds the compile; a new size or batch compiles again, and so
does another LoRA set or scale (peft's layers and scales are guarded values; diffusers' hotswap, which
avoids that, is not wired in): the worker says so (``Compiler.prepare`` returns what to say).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Compiler"]


@dataclass
class Compiler:
    """Whether this worker's denoiser is compiled, and for which call shapes it has compiled code."""

    done: bool = False
    how: str = ""
    shapes: set[tuple[Any, ...]] = field(default_factory=set)

    def prepare(self, pipe: Any, wanted: bool, shape: tuple[Any, ...]) -> str | None:
        """Compile if ``wanted`` and not yet; what the coming call will be doing besides denoising, or None."""
        if wanted and not self.done:
            self.how = _compile(_denoiser(pipe))
            self.done = True
            self.shapes.add(shape)
            return f"compiling ({self.how})"
        if self.done and shape not in self.shapes:
            self.shapes.add(shape)
            return f"recompiling for a new size, batch or LoRA set {_shape_text(shape)}"
        return None


def _denoiser(pipe: Any) -> Any:
    """The model that runs every step: the transformer of DiT pipelines, else the UNet."""
    for name in ("transformer", "unet"):
        model = getattr(pipe, name, None)
        if model is not None:
            return model
    raise ValueError(f"--compile: {type(pipe).__name__} has no transformer or unet to compile")


def _compile(model: Any) -> str:
    """Compile ``model`` in place; returns how (for the worker's line)."""
    if getattr(model, "_repeated_blocks", None) and hasattr(model, "compile_repeated_blocks"):
        # fullgraph=False: a --cache hook's decision (a .item(), torch.compiler.disable) breaks the graph there
        model.compile_repeated_blocks(fullgraph=False)
        return f"repeated blocks of {type(model).__name__}: {', '.join(model._repeated_blocks)}"
    model.compile()
    return f"whole {type(model).__name__}"


def _shape_text(shape: tuple[Any, ...]) -> str:
    """``(64x32, batch 1)``, with the LoRAs where there are any: what the compiled code was made for."""
    height, width, batch, loras = shape
    size = f"{width}x{height}, " if height and width else ""
    lora = f", LoRAs {', '.join(f'{name}:{scale:g}' for name, scale in loras)}" if loras else ""
    return f"({size}batch {batch}{lora})"
