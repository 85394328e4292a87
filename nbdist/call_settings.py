"""What every pipeline call of a run gets, and what the images are really made with.

nbdist passes steps, guidance, size and negative prompt only when someone chose them: the user, the
model's own ``nbdist.json``, or nbdist's table of well-known checkpoints whose class defaults are wrong
for them (a Turbo model at 50 steps and guidance 5 looks wrong and takes 25 times longer). Otherwise
the pipeline's own ``__call__`` defaults apply, read from its signature so every image still records
exactly how it was made, and where each value came from.

Used in the kernel (planning) and in processes started by ``torchrun`` (each resolves for itself).
Imports neither IPython nor CUDA.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model_files import ModelFiles, model_files
from .options import GenerateOptions, NbdistUsageError

__all__ = [
    "CHECKPOINTS",
    "CallSettings",
    "call_parameters",
    "check_params",
    "check_scheduler",
    "image_size",
    "resolve_call",
]

# Settings from the model cards of checkpoints whose pipeline class defaults do not suit them; each
# entry's card (its diffusers example) is named beside it.
CHECKPOINTS: dict[str, dict[str, float | int]] = {
    # https://huggingface.co/stabilityai/sdxl-turbo
    "stabilityai/sdxl-turbo": {"steps": 1, "guidance": 0.0},
    # https://huggingface.co/stabilityai/sd-turbo
    "stabilityai/sd-turbo": {"steps": 1, "guidance": 0.0},
    # https://huggingface.co/stabilityai/stable-diffusion-3.5-large-turbo
    "stabilityai/stable-diffusion-3.5-large-turbo": {"steps": 4, "guidance": 0.0},
    # https://huggingface.co/stabilityai/stable-diffusion-3.5-large (the class default is guidance 7.0)
    "stabilityai/stable-diffusion-3.5-large": {"steps": 28, "guidance": 3.5},
    # https://huggingface.co/stabilityai/stable-diffusion-3.5-medium
    "stabilityai/stable-diffusion-3.5-medium": {"steps": 40, "guidance": 4.5},
    # https://huggingface.co/black-forest-labs/FLUX.1-schnell
    "black-forest-labs/FLUX.1-schnell": {"steps": 4, "guidance": 0.0},
    # https://huggingface.co/SimianLuo/LCM_Dreamshaper_v7
    "SimianLuo/LCM_Dreamshaper_v7": {"steps": 4, "guidance": 8.0},
    # https://huggingface.co/latent-consistency/lcm-sdxl
    "latent-consistency/lcm-sdxl": {"steps": 4, "guidance": 8.0},
}

_ARGUMENT = {"steps": "num_inference_steps", "guidance": "guidance_scale", "height": "height", "width": "width"}
# Call arguments nbdist sets itself: a --param for them would fight it.
_RESERVED = {
    "prompt": "the cell's lines",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "height": "--height",
    "width": "--width",
    "negative_prompt": "--negative",
    "generator": "--seed",
    "num_images_per_prompt": "-k",
    "output_type": "nbdist",
    "callback_on_step_end": "nbdist",
    "latents": "--variation-seed",
    "return_dict": "nbdist",
}


@dataclass(frozen=True)
class CallSettings:
    """The shared call arguments of a run, the effective values and their sources."""

    kwargs: dict[str, Any]  # passed to every call (besides prompt, negative prompt and generators)
    effective: dict[str, Any]  # steps, guidance, height, width, negative, scheduler as the images get them
    sources: dict[str, str]  # "user", "model file", "table", "class" for each effective value
    negative: str | None = None  # passed per batch, only where the pipeline takes it
    scheduler: str | None = None  # a scheduler class to swap in (--scheduler), else None
    notes: list[str] = field(default_factory=list)  # one line each: what the pipeline will not use
    loras: dict[str, float] = field(default_factory=dict)  # --lora: source -> scale (a sweep may change them)
    fuse_lora: bool = False  # --fuse-lora: the workers fuse the active LoRAs into the weights
    prompt_syntax: str = "weighted"  # --prompt-syntax: "weighted" prompts go through compel where they need it
    preview: str = "auto"  # --preview: how the workers draw an image while it denoises (preview_choice.py)
    variation_seed: int | None = None  # --variation-seed: image i's noise blended with seed V + i's (variations.py)
    variation_strength: float | None = None  # --variation-strength: how far towards it (0: the image itself)
    init: str | tuple[str, ...] | None = None  # --init: the PNG(s) to refine (img2img.py), one or one per prompt
    strength: float | None = None  # --strength: how much of the denoising is redone (None: the pipeline's)
    upscale: float | None = None  # --upscale: the init resized by this factor first (a hires-fix pass)
    compile: bool = False  # --compile: the workers compile the denoiser before their first call (compiling.py)
    cache: str | None = None  # --cache: the step cache's label (fbc=0.05, taylorseer) or None (caching.py)

    @property
    def steps(self) -> int:
        return int(self.effective.get("steps") or 1)


def call_parameters(pipe: Any) -> dict[str, inspect.Parameter] | None:
    """The call arguments of a pipeline (or of its class); None without either.

    A subclass whose ``__call__`` takes ``**kwargs`` and hands them to ``super()`` (a user's wrapper)
    still takes its base class's arguments: they are read down the MRO until a signature without
    ``**kwargs``, so ``--steps`` reaches such a pipeline instead of being dropped.
    """
    if pipe is None:
        return None
    params: dict[str, inspect.Parameter] = {}
    for cls in (pipe if isinstance(pipe, type) else type(pipe)).__mro__:
        call = cls.__dict__.get("__call__")
        if call is None:
            continue
        own = inspect.signature(call).parameters
        for name, param in own.items():
            if param.kind is not inspect.Parameter.VAR_KEYWORD:
                params.setdefault(name, param)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            break
    return params


def recommended(model: str | None) -> tuple[dict[str, Any], str]:
    """The checkpoint's own settings: ``nbdist.json`` in its folder, else the table; and which it was."""
    if model:
        path = Path(os.path.expanduser(model)) / "nbdist.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise NbdistUsageError(f"{path}: not valid JSON ({exc})") from exc
            return {k: data[k] for k in ("steps", "guidance", "height", "width") if k in data}, "model file"
        if model in CHECKPOINTS:
            return dict(CHECKPOINTS[model]), "table"
    return {}, "class"


def default_size(pipe: Any) -> tuple[int | None, int | None]:
    """(height, width) a call without them makes: the family's default sample size × VAE scale factor."""
    scale = getattr(pipe, "vae_scale_factor", None) or 8
    side = getattr(pipe, "default_sample_size", None)
    if side is None:
        for name in ("unet", "transformer"):
            config = getattr(getattr(pipe, name, None), "config", None)
            side = getattr(config, "sample_size", None) if config is not None else None
            if side is not None:
                break
    if isinstance(side, list | tuple):
        side = side[0]
    return (int(side) * int(scale),) * 2 if side else (None, None)  # type: ignore[return-value]


def image_size(call: CallSettings) -> tuple[int, int]:
    """(height, width) a run's images are recorded with: the call's, else 512 (no config says otherwise).

    One rule for every launcher (the notebook's plan, the CLI under torchrun / accelerate launch).
    """
    return call.effective.get("height") or 512, call.effective.get("width") or 512


def _choose(
    options: GenerateOptions, params: dict[str, Any], model: str | None, size: dict[str, int | None]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Each setting from the user, else the checkpoint table, else the class (its default, else its size).

    Returns the call's keyword arguments (only what differs from the class), the effective values and
    where each came from.
    """
    chosen, source = recommended(model)
    kwargs: dict[str, Any] = {}
    effective: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, argument in _ARGUMENT.items():
        user = getattr(options, name)
        if user is not None:
            value, sources[name] = user, "user"
        elif name in chosen:
            value, sources[name] = chosen[name], source
        else:
            default = params[argument].default if params.get(argument) is not None else None
            if default is inspect.Parameter.empty or default is None:
                default = size.get(name)
            effective[name], sources[name] = default, "class"
            continue
        effective[name] = value
        if argument in params:
            kwargs[argument] = value
    return kwargs, effective, sources


def resolve_call(pipe: Any, model: str | None, options: GenerateOptions) -> CallSettings:
    """Effective settings for ``pipe`` with ``options``: user > model file > table > the class's default."""
    files = model_files(model, getattr(options, "revision", None)) if pipe is None else None
    shape = pipe if pipe is not None else files.pipeline_class() if files is not None else None
    signature = call_parameters(shape)  # no pipeline here (--quantize, --device-map, --cluster): its class's
    params = signature if signature is not None else {a: None for a in (*_ARGUMENT.values(), "negative_prompt")}
    known = default_size(pipe) if pipe is not None else files.default_size() if files is not None else (None, None)
    kwargs, effective, sources = _choose(options, params, model, dict(zip(("height", "width"), known, strict=True)))
    kwargs.update(options.params)
    notes = _unused(shape, params, options) if signature is not None else []
    negative = options.negative if options.negative is not None and "negative_prompt" in params else None
    effective["negative"], sources["negative"] = negative, "user" if negative is not None else "class"
    effective["scheduler"] = options.scheduler or _scheduler_name(pipe, files)
    sources["scheduler"] = "user" if options.scheduler else "class"
    loras = dict(getattr(options, "loras", None) or {})
    fuse = bool(getattr(options, "fuse_lora", False))
    syntax = str(getattr(options, "prompt_syntax", "weighted"))
    preview = str(getattr(options, "preview", "auto"))
    variation = (getattr(options, "variation_seed", None), getattr(options, "variation_strength", None))
    refine = (getattr(options, "init", None), getattr(options, "strength", None), getattr(options, "upscale", None))
    return CallSettings(
        kwargs,
        effective,
        sources,
        negative,
        options.scheduler,
        notes,
        loras,
        fuse,
        syntax,
        preview,
        *variation,
        *refine,
        compile=bool(getattr(options, "compile", False)),
        cache=_cache_label(getattr(options, "cache", None)),
    )


def _cache_label(value: Any) -> str | None:
    """``--cache`` as the label the workers and records use (None: no cache)."""
    from .cache_choice import parse_cache

    choice = parse_cache(value)
    return choice.label if choice is not None else None


def _scheduler_name(pipe: Any, files: ModelFiles | None) -> str | None:
    """The class of the scheduler the images are made with: the pipeline's, else its config's."""
    if pipe is None:
        return files.scheduler_class() if files is not None else None
    return type(getattr(pipe, "scheduler", None)).__name__


def _unused(pipe: Any, params: dict[str, inspect.Parameter], options: GenerateOptions) -> list[str]:
    """One line per setting the user gave that this pipeline (or pipeline class) will not use."""
    cls = (pipe if isinstance(pipe, type) else type(pipe)).__name__
    notes = []
    if options.negative is not None:
        if "negative_prompt" not in params:
            notes.append(f"nbdist: {cls} takes no negative prompt; --negative is ignored")
        elif params.get("true_cfg_scale") is not None:
            true_cfg = options.params.get("true_cfg_scale", params["true_cfg_scale"].default)
            if not isinstance(true_cfg, int | float) or true_cfg <= 1:
                notes.append(f"nbdist: {cls} uses a negative prompt only with --param true_cfg_scale=4.0 (> 1)")
    if options.guidance is not None and "guidance_scale" not in params:
        notes.append(f"nbdist: {cls} takes no guidance scale; --guidance is ignored")
    return notes


def check_params(pipe: Any, params: dict[str, Any]) -> None:
    """Every ``--param`` must be an argument of the pipeline's ``__call__`` that nbdist does not set itself."""
    known = [
        n
        for n, p in (call_parameters(pipe) or {}).items()
        if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    cls = type(pipe).__name__
    for name in params:
        if name in _RESERVED:
            raise NbdistUsageError(f"--param {name}: set by {_RESERVED[name]}, not by --param")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; it takes {', '.join(sorted(known))}"
            raise NbdistUsageError(f"--param {name}: {cls} has no such call argument{hint}")


def check_scheduler(pipe: Any, name: str | None) -> None:
    """``--scheduler`` must be one of the pipeline's compatible schedulers."""
    if name is None:
        return
    scheduler = getattr(pipe, "scheduler", None)
    compatible = {c.__name__ for c in getattr(scheduler, "compatibles", [])} | {type(scheduler).__name__}
    if name not in compatible:
        raise NbdistUsageError(
            f"--scheduler {name}: not compatible with {type(pipe).__name__}; choose one of "
            + ", ".join(sorted(compatible))
        )
