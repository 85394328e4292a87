"""``--compile`` and ``--cache`` around one pipeline call: set up before it, told in its images' notes after.

Before the call the batch's cache (a ``--sweep cache=`` row may change it) is switched on the denoiser
and its tally restarted, and the compiler says whether this call will compile (the first call of a
``--compile`` run, or a new size on compiled workers): the worker's header line says so at once
(``WorkerActivity``). After it, each image's note says what the call did besides denoising (``compiling
...: 37.0 s in this call``, ``cache fbc=1: 3 of 4 steps skipped``) and the skipped steps travel with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..cache_choice import parse_cache
from ..call_settings import CallSettings
from ..jobs import ImageJob
from ..loras import lora_label
from ..messages import Message, WorkerActivity
from ..sweep import job_call
from .generation import Made

__all__ = ["CallSpeed", "after_call", "before_call"]


@dataclass(frozen=True)
class CallSpeed:
    """What one call does besides denoising: compiling (said in words), the cache it runs with, its start."""

    activity: str | None
    cache: str | None
    steps: int
    started: float


def before_call(worker: Any, batch: list[ImageJob], call: CallSettings, send: Callable[[Message], None]) -> CallSpeed:
    """Switch the batch's cache on the denoiser and compile if asked; tell the header what the call will do."""
    settings = batch[0].settings
    choice = parse_cache(settings.get("cache", call.cache))
    label = choice.label if choice is not None else None
    if label is not None or worker.cache.active is not None:
        worker.cache.use(worker.pipe, label)
    worker.cache.start()
    kwargs, _, _, steps = job_call(call, settings)
    height = kwargs.get("height") or call.effective.get("height")
    width = kwargs.get("width") or call.effective.get("width")
    loras = tuple(sorted((lora_label(source), scale) for source, scale in worker.adapters.active.items()))
    activity = worker.compiler.prepare(worker.pipe, call.compile, (height, width, len(batch), loras))
    if activity is not None:
        send(WorkerActivity(worker.rank, activity))
    return CallSpeed(activity, label, steps, time.perf_counter())


def after_call(worker: Any, speed: CallSpeed, made: list[Made]) -> list[Made]:
    """The images with the call's compile time and skipped steps in their notes."""
    skipped = worker.cache.skipped_steps(speed.steps)
    notes = []
    if speed.activity is not None:
        notes.append(f"{speed.activity}: {time.perf_counter() - speed.started:.1f} s in this call")
    if skipped is not None:
        notes.append(f"cache {speed.cache}: {skipped} of {speed.steps} steps skipped")
    if not notes:
        return made
    return [replace(m, note=" · ".join([*([m.note] if m.note else []), *notes]), skipped_steps=skipped) for m in made]
