"""LoRAs in a warm worker: each loaded once as a named adapter, the run's set and scales activated per batch.

Why adapters and not merged weights: a later cell (or the next image of a LoRA sweep) with other LoRAs
or scales then only calls ``set_adapters``; the base weights stay as forked, so the workers stay warm
and nothing is copied again. diffusers and peft do the work (``load_lora_weights(adapter_name=...)``,
``set_adapters``, ``disable_lora``, ``fuse_lora``); this module only remembers what is loaded and active.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..loras import adapter_name, lora_source

__all__ = ["MAX_LOADED", "Adapters", "LoraMismatch"]

MAX_LOADED = 8  # adapters kept loaded per worker; the least recently used beyond that are deleted


class LoraMismatch(ValueError):
    """A LoRA that ``load_lora_weights`` refused for this pipeline, said in one line."""


@dataclass
class Adapters:
    """What this worker's pipeline holds: loaded adapters (source → name, oldest use first) and the active set."""

    loaded: dict[str, str] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)
    fused: bool = False

    def use(self, pipe: Any, wanted: Mapping[str, float], fuse: bool = False) -> None:
        """Make ``wanted`` (source → scale) the active LoRAs of ``pipe``; nothing at all when it already is."""
        wanted = dict(wanted)
        if wanted == self.active and fuse == self.fused:
            return
        if self.fused:
            pipe.unfuse_lora()  # back to the base weights before any other set is activated
            self.fused = False
        for source in wanted:
            self._load(pipe, source, keep=wanted)
        names = [self.loaded[source] for source in wanted]
        if names:
            pipe.enable_lora()  # undoes a disable_lora of an earlier run without LoRAs
            pipe.set_adapters(names, adapter_weights=list(wanted.values()))
            if fuse:
                pipe.fuse_lora(adapter_names=names)
                self.fused = True
        elif self.loaded:
            pipe.disable_lora()
        self.active = wanted

    def _load(self, pipe: Any, source: str, keep: Mapping[str, float]) -> None:
        """Load ``source`` as an adapter unless it is; a refusal becomes ``LoraMismatch`` and leaves nothing behind."""
        if source in self.loaded:
            self.loaded[source] = self.loaded.pop(source)  # most recently used last
            return
        self._evict(pipe, keep)
        name = adapter_name(source)
        where = lora_source(source, allow_pickle=True)  # the kernel checked the file and --allow-pickle
        kwargs = {"weight_name": where.weight_name} if where.weight_name else {}
        try:
            pipe.load_lora_weights(where.location, adapter_name=name, **kwargs)
        except Exception as exc:
            with contextlib.suppress(Exception):
                pipe.delete_adapters(name)  # a half-injected adapter would break the next set_adapters
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LoraMismatch(f"LoRA {source} does not match {type(pipe).__name__}: {first}") from exc
        self.loaded[source] = name

    def _evict(self, pipe: Any, keep: Mapping[str, float]) -> None:
        """Delete the least recently used adapters this run does not need, so at most ``MAX_LOADED`` stay."""
        for source in list(self.loaded):
            if len(self.loaded) < MAX_LOADED:
                return
            if source not in keep:
                pipe.delete_adapters(self.loaded.pop(source))
                self.active.pop(source, None)
