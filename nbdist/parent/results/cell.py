"""``res[i].cell``: the ``%%distgen`` cell that makes image ``i`` again, alone, in any kernel.

Why built from the options and not from the cell the user typed: the typed cell makes every image of
the run, may hold a sweep, ``-k``, ``{variables}`` that have changed since; this one names the model,
every setting that shapes the pixels (a sweep's values for this image folded into plain flags), and the
image's own seed, so it reproduces exactly that image whatever the workers, batch size or schedule.
"""

from __future__ import annotations

import shlex
from dataclasses import fields
from typing import Any

from ...arguments import OPTION_ARGUMENTS
from ...jobs import ImageJob, variation_of
from ...loras import active_loras
from ...options import GenerateOptions

__all__ = ["image_cell", "image_options", "model_name"]

# Options that decide where and how fast images are made, or where they go, never their pixels.
NOT_PIXELS = {
    "num_processes",
    "device",
    "save_dir",
    "overwrite",
    "schedule",
    "thumbnail_size",
    "preview",
    "batch_size",
    "images_per_prompt",
    "sweep",
    "device_map",
    "max_memory",
    "offload",
    "compile",  # compiled code makes the same images within float rounding
}
_FLAGS = {arg.dest: arg for arg in OPTION_ARGUMENTS}


def image_options(options: GenerateOptions, job: ImageJob) -> GenerateOptions:
    """The run's options for one image alone: its seed, its variation seed, its sweep values as plain settings."""
    changes: dict[str, Any] = {"seed": job.seed, "sweep": {}, "images_per_prompt": 1, "schedule": None}
    params = dict(options.params)
    settings = job.settings
    variation = variation_of(job, options)
    if variation is not None:  # alone it is image 0: the cell names its variation seed itself
        changes["variation_seed"], changes["variation_strength"] = variation
    for name, value in settings.items():
        if name in ("variation_seed", "variation_strength"):
            continue
        if name in ("steps", "guidance", "negative", "scheduler"):
            changes[name] = value
        elif name == "size":
            changes["width"], changes["height"] = value
        elif name == "cache":  # a --sweep cache= value as the plain flag (off: none)
            changes["cache"] = None if value == "off" else value
        elif name != "seed" and name != "lora" and not name.startswith("lora:"):
            params[name] = value
    changes["params"] = params
    changes["loras"] = active_loras(options.loras, settings)
    return options.with_(**changes)


def image_cell(model: str, prompt: str, options: GenerateOptions) -> str:
    """A ``%%distgen`` cell: the first line's flags for every setting that differs from the default."""
    words = ["%%distgen", "--model", _quote(model)]
    defaults = GenerateOptions()
    for field in fields(GenerateOptions):
        value = getattr(options, field.name)
        if field.name in NOT_PIXELS or value == getattr(defaults, field.name) or field.name not in _FLAGS:
            continue
        flag = _FLAGS[field.name].flags[-1]
        if field.name == "params":
            words += [w for name, v in value.items() for w in ("--param", _quote(f"{name}={v!r}"))]
        elif field.name == "loras":
            words += [w for source, scale in value.items() for w in ("--lora", _quote(f"{source}:{scale:g}"))]
        elif _FLAGS[field.name].kwargs.get("action") == "store_true":
            words.append(flag)
        else:
            words += [flag, _quote(str(value))]
    return " ".join(words) + "\n" + _escape(prompt)


def model_name(model: str) -> str:
    """``demo`` for the shipped demo model's folder (the same in every install); any other name as it is."""
    from ...demo import MODEL_DIR

    return "demo" if model == str(MODEL_DIR) else model


def _escape(text: str) -> str:
    """IPython expands ``{expr}`` and ``$name`` in the magic's line and nbdist in its body: doubled, they stay."""
    return text.replace("{", "{{").replace("}", "}}").replace("$", "$$")


def _quote(text: str) -> str:
    return _escape(shlex.quote(text))
