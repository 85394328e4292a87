"""Parameter sweeps: ``--sweep NAME=V1,V2,...`` axes, their product of jobs, and per-image call arguments.

A sweep is for comparing, so images that differ only in swept values share a seed: prompt ``j``'s
image ``k`` keeps seed ``seed + j*K + k`` whatever the other axes (a row shows the parameter's effect
and nothing else). Sweeping ``seed`` sets it directly (``value + k``). Imports neither IPython nor CUDA.
"""

from __future__ import annotations

import ast
from typing import Any

from .cache_choice import parse_cache
from .loras import is_lora_axis, lora_label
from .options import NbdistUsageError

__all__ = ["BUILTIN_AXES", "MAX_AXES", "SHORT_AXES", "axis_label", "job_call", "parse_sweep", "value_label"]

BUILTIN_AXES = (
    "seed",
    "steps",
    "guidance",
    "size",
    "negative",
    "scheduler",
    "variation_seed",
    "variation_strength",
    "cache",
)
NOT_CALL_ARGUMENTS = ("seed", "variation_seed", "variation_strength", "cache")  # axes the worker applies itself
MAX_AXES = 3


def _ints(name: str, raw: str) -> list[int]:
    values: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("..")
        try:
            bounds = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise NbdistUsageError(f"--sweep {name}: {part!r} is not an integer (or a range A..B)") from None
        if bounds[1] < bounds[0]:
            raise NbdistUsageError(f"--sweep {name}={raw}: range {part} runs backwards")
        values.extend(range(bounds[0], bounds[1] + 1))
    return values


def _value(name: str, part: str) -> Any:
    part = part.strip()
    if is_lora_axis(name):  # a scale, or a LoRA source (a path) or none
        try:
            return [float(part)]
        except ValueError:
            return [part]
    if name in ("steps", "seed"):
        return _ints(name, part)
    if name == "guidance":
        try:
            return [float(part)]
        except ValueError:
            raise NbdistUsageError(f"--sweep guidance: {part!r} is not a number") from None
    if name == "size":
        width, sep, height = part.lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise NbdistUsageError(f"--sweep size: {part!r} is not WIDTHxHEIGHT, e.g. 512x768")
        return [(int(width), int(height))]
    if name in ("negative", "scheduler"):
        return [part]
    if name == "cache":  # checked now; kept as its label (fbc=0.1, off): what captions and grids show
        choice = parse_cache(part)
        return [choice.label if choice is not None else "off"]
    try:
        return [ast.literal_eval(part)]
    except (ValueError, SyntaxError):
        if not part.replace("_", "").replace("-", "").isalnum():
            raise NbdistUsageError(f"--sweep {name}: {part!r} is not a Python literal") from None
        return [part]


def _text(value: Any) -> str:
    """A value given in Python (``sweep={"size": [(512, 768)]}``) as the flag's text."""
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)


def parse_sweep(items: list[str] | dict[str, Any]) -> dict[str, list[Any]]:
    """``["guidance=3,5,7.5", "seed=0..3"]`` (or a dict of lists) → ``{"guidance": [3.0, 5.0, 7.5], ...}``."""
    if isinstance(items, dict):
        pairs = [(k, ",".join(map(_text, vs)) if isinstance(vs, list) else _text(vs)) for k, vs in items.items()]
    else:
        pairs = [tuple(item.split("=", 1)) if "=" in item else (item, "") for item in items]  # type: ignore[misc]
    axes: dict[str, list[Any]] = {}
    for name, raw in pairs:
        name = name.strip()
        if not (name.isidentifier() or is_lora_axis(name)) or not raw.strip():
            raise NbdistUsageError(f"--sweep {name}={raw}: write NAME=V1,V2,... e.g. --sweep guidance=3,5,7.5")
        if name in axes:
            raise NbdistUsageError(f"--sweep {name} given twice")
        values: list[Any] = []
        for part in raw.split(",") if name not in ("steps", "seed") else [raw]:
            values.extend(_value(name, part))
        if name in ("steps",) and any(v < 1 for v in values):
            raise NbdistUsageError("--sweep steps: every value must be a positive integer")
        if name == "seed" and any(v < 0 for v in values):
            raise NbdistUsageError("--sweep seed: seeds must be non-negative")
        if name == "guidance" and any(v < 0 for v in values):
            raise NbdistUsageError("--sweep guidance: every value must be >= 0")
        axes[name] = values
    if len(axes) > MAX_AXES:
        raise NbdistUsageError(f"--sweep: at most {MAX_AXES} axes, got {len(axes)} ({', '.join(axes)})")
    return axes


def value_label(name: str, value: Any) -> str:
    """How a value reads in captions, axis labels and metadata: ``512x768``, ``7.5``, ``'blurry'``."""
    if name == "size":
        return f"{value[0]}x{value[1]}"
    if is_lora_axis(name) and isinstance(value, str):
        return lora_label(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# Axes whose names would fill a narrow column label before their value shows ("More like this" is eight
# columns of variation_seed): captioned with a short word and the value instead.
SHORT_AXES = {"variation_seed": "variation", "variation_strength": "strength"}


def axis_label(name: str, value: Any) -> str:
    """A column, row or heading label, and the caption of a swept value: ``guidance=7.5``, ``variation 3``."""
    short = SHORT_AXES.get(name)
    return f"{short} {value_label(name, value)}" if short else f"{name}={value_label(name, value)}"


def job_call(call: Any, params: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None, int]:
    """(call kwargs, negative prompt, scheduler, steps) for an image with these sweep values."""
    kwargs = dict(call.kwargs)
    negative, scheduler, steps = call.negative, call.scheduler, call.steps
    for name, value in params.items():
        if name == "steps":
            kwargs["num_inference_steps"] = steps = value
        elif name == "guidance":
            kwargs["guidance_scale"] = value
        elif name == "size":
            kwargs["width"], kwargs["height"] = value
        elif name == "negative":
            negative = value
        elif name == "scheduler":
            scheduler = value
        elif name not in NOT_CALL_ARGUMENTS and not is_lora_axis(name):  # LoRAs: adapters; cache: hooks
            kwargs[name] = value
    return kwargs, negative, scheduler, steps
