"""``--cache`` in a warm worker: diffusers' step cache on the denoiser, and how many steps it skipped.

diffusers does the caching (``transformer.enable_cache(FirstBlockCacheConfig(...))``,
``TaylorSeerCacheConfig``, ``disable_cache()``); this module switches it per batch (a ``--sweep cache=``
row may change it) and counts. Why count block executions: neither hook keeps a tally of what it
skipped, but both skip by not calling the wrapped forward of the denoiser's last block. A counting
hook registered on that block before any cache hook (diffusers' ``HookRegistry`` calls hooks outermost
first) therefore runs exactly when the block really computes; the denoiser's own calls are counted by
a forward pre-hook. Skipped passes = calls - computed, reported in steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..cache_choice import parse_cache

__all__ = ["StepCache"]

_COUNTER_HOOK = "nbdist_block_computed"


@dataclass
class _Tally:
    calls: int = 0  # denoiser forwards (one per step, two with true CFG run as separate calls)
    computed: dict[str, int] = field(default_factory=dict)  # per cache kind: its watched module really ran

    def reset(self) -> None:
        self.calls = 0
        self.computed = dict.fromkeys(self.computed, 0)


@dataclass
class StepCache:
    """The cache the denoiser runs with now (its label, None: none) and the tally of the current call."""

    active: str | None = None
    tally: _Tally = field(default_factory=_Tally)
    _counting: bool = False

    def use(self, pipe: Any, label: str | None) -> None:
        """Make ``label`` (``fbc=0.1``, ``taylorseer``, None) the denoiser's cache; nothing when it already is."""
        if label == self.active:
            return
        denoiser = getattr(pipe, "transformer", None)
        if not callable(getattr(denoiser, "enable_cache", None)):  # the kernel checks this where it loaded the model
            raise ValueError(f"--cache: {type(pipe).__name__}'s denoiser has no diffusers step cache")
        if self.active is not None:
            denoiser.disable_cache()
            self.active = None
        if label is not None:
            if not self._counting:
                self._install_counters(denoiser)
            denoiser.enable_cache(_config(label, denoiser.dtype))
            self.active = label

    def start(self) -> None:
        """A pipeline call begins: count from zero."""
        self.tally.reset()

    def skipped_steps(self, steps: int) -> int | None:
        """Steps the cache skipped in the last call (None without a cache).

        A step is one denoiser call, or two where the pipeline runs true CFG as separate calls; an
        img2img call runs fewer steps than asked, so the calls per step are rounded, never below one.
        """
        tally, choice = self.tally, parse_cache(self.active)
        if choice is None or not tally.calls:
            return None
        per_step = max(1, round(tally.calls / max(1, steps)))
        return round((tally.calls - tally.computed.get(choice.kind, 0)) / per_step)

    def _install_counters(self, denoiser: Any) -> None:
        """A counting hook on the module each cache kind skips, innermost (before any cache hook is there)."""
        import torch
        from diffusers.hooks import HookRegistry, ModelHook

        tally = self.tally

        class CountComputed(ModelHook):
            """Runs only when the watched module is really computed, not when a cache hook answers for it."""

            def __init__(self, kind: str) -> None:
                super().__init__()
                self.kind = kind
                tally.computed[kind] = 0

            def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
                _count(self.kind)
                return self.fn_ref.original_forward(*args, **kwargs)

        @torch.compiler.disable
        def _count(kind: str) -> None:
            tally.computed[kind] += 1

        @torch.compiler.disable
        def _call(module: Any, args: Any) -> None:
            tally.calls += 1

        for kind, module in _watched(denoiser).items():
            HookRegistry.check_if_exists_or_initialize(module).register_hook(CountComputed(kind), _COUNTER_HOOK)
        denoiser.register_forward_pre_hook(_call)
        self._counting = True


def _watched(denoiser: Any) -> dict[str, Any]:
    """Per cache kind, the last module it skips: first-block cache the denoiser's last transformer block
    (its tail), TaylorSeer the last attention it predicts (diffusers' own name patterns for both)."""
    import torch
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
    from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS

    blocks = [
        block
        for name, child in denoiser.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList)
        for block in child
    ]
    attentions = [
        module
        for name, module in denoiser.named_modules()
        if any(re.fullmatch(pattern, name) for pattern in _TRANSFORMER_BLOCK_IDENTIFIERS)
    ]
    if not blocks:
        raise ValueError(f"--cache: {type(denoiser).__name__} has no transformer block list to cache")
    return {"fbc": blocks[-1], **({"taylorseer": attentions[-1]} if attentions else {})}


def _config(label: str, dtype: Any) -> Any:
    """diffusers' config object for a cache label; TaylorSeer keeps its factors in the denoiser's dtype."""
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    choice = parse_cache(label)
    if choice is None:
        raise ValueError("no cache")
    if choice.kind == "fbc":
        return FirstBlockCacheConfig(threshold=float(choice.threshold or 0.0))
    return TaylorSeerCacheConfig(taylor_factors_dtype=dtype)
