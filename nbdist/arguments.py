"""The generation options as command-line arguments, declared once for ``%%distgen`` and ``nbdist generate``.

Both front ends take the same flags with the same help text and defaults; a table keeps them from
drifting apart. The magic feeds it to IPython's ``magic_arguments`` (so ``%%distgen?`` stays the
complete help and a bad flag stays a ``UsageError``), the CLI to ``argparse``. Nothing here imports
IPython.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .loras import PROMPT_SYNTAXES, parse_loras
from .options import DEVICES, DTYPES, SCHEDULES, GenerateOptions, NbdistUsageError
from .placement import DEVICE_MAPS, OFFLOADS, QUANTIZE
from .sweep import parse_sweep

__all__ = ["OPTION_ARGUMENTS", "Argument", "add_to_parser", "as_typed", "magic_decorators", "options_from_args"]


@dataclass(frozen=True)
class Argument:
    """One flag: ``argparse.add_argument(*flags, **kwargs)``; ``dest`` is a ``GenerateOptions`` field."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flags[-1].lstrip("-").replace("-", "_")


OPTION_ARGUMENTS: tuple[Argument, ...] = (
    Argument(("--dtype",), {"choices": DTYPES, "help": "weights dtype (default: float16 on GPU, float32 on CPU)"}),
    Argument(
        ("-n", "--num-processes"),
        {
            "type": int,
            "metavar": "N",
            "help": "workers (default: one per visible GPU; on CPU, up to 4 sharing the cores)",
        },
    ),
    Argument(
        ("--cluster",),
        {
            "metavar": "ADDRESS",
            "help": "run on a Ray cluster: auto (on a node of it) or HOST:PORT of its head (default: $NBDIST_CLUSTER, "
            "else this machine); one actor per GPU of the cluster (on CPUs, -n actors), each loading the model itself",
        },
    ),
    Argument(
        ("--cluster-wait",),
        {
            "type": float,
            "default": 60.0,
            "metavar": "SECONDS",
            "help": "with --cluster: how long to wait for busy GPUs/CPUs to free before the run is refused "
            "(default: 60)",
        },
    ),
    Argument(("--device",), {"choices": DEVICES, "default": "auto", "help": "where workers run (default: GPU if any)"}),
    Argument(
        ("--device-map",),
        {
            "choices": DEVICE_MAPS,
            "help": "balanced: one process, the model's components spread over all GPUs "
            "(from_pretrained(device_map='balanced'), for models too big for one GPU; not faster)",
        },
    ),
    Argument(
        ("--max-memory",),
        {
            "metavar": "DEV=SIZE,...",
            "help": "with --device-map: memory each device may hold, e.g. 0=10GiB,1=10GiB,cpu=30GiB "
            "(a device left out is not used)",
        },
    ),
    Argument(
        ("--offload",),
        {
            "choices": OFFLOADS,
            "help": "keep the weights in host RAM, each worker moving to its GPU only what runs now: model "
            "(one component at a time; a little slower) or sequential (one layer at a time; much slower, least "
            "GPU memory)",
        },
    ),
    Argument(
        ("--quantize",),
        {
            "choices": QUANTIZE,
            "help": "load the denoiser and the T5/LLM text encoders quantized, in the workers: nf4 (4-bit, "
            "~0.28x of bf16) or int8 (~0.53x) with bitsandbytes, torchao-int8wo with torchao",
        },
    ),
    Argument(
        ("--vae-tiling",),
        {"action": "store_true", "help": "decode the image in tiles (vae.enable_tiling()): big images, less memory"},
    ),
    Argument(
        ("--steps",),
        {"type": int, "help": "denoising steps (default: the model's nbdist.json or known setting, else its class's)"},
    ),
    Argument(
        ("--guidance",),
        {"type": float, "help": "guidance scale (default: the model's nbdist.json or known setting, else its class's)"},
    ),
    Argument(("--height",), {"type": int, "help": "image height in pixels (multiple of the VAE scale factor)"}),
    Argument(("--width",), {"type": int, "help": "image width in pixels (multiple of the VAE scale factor)"}),
    Argument(("--negative",), {"metavar": "TEXT", "help": "negative prompt for every image"}),
    Argument(("--seed",), {"type": int, "help": "base seed: image i uses seed+i (default: random, and shown)"}),
    Argument(("-k", "--images-per-prompt"), {"type": int, "default": 1, "metavar": "K", "help": "images per prompt"}),
    Argument(
        ("-b", "--batch-size"),
        {"type": int, "default": 1, "metavar": "B", "help": "images per forward pass in a worker"},
    ),
    Argument(
        ("--schedule",),
        {
            "choices": SCHEDULES,
            "help": "static: split jobs up front (split_between_processes); dynamic: workers pull the next job "
            "(default: static, dynamic for a --sweep)",
        },
    ),
    Argument(
        ("--save-dir",),
        {
            "metavar": "DIR",
            "help": "write each PNG (with its parameters) and manifest.jsonl here (default: a new folder "
            "nbdist-runs/<date>-<time>-<first words>/ next to the notebook, or under $NBDIST_SAVE_DIR)",
        },
    ),
    Argument(
        ("--no-save",),
        {
            "action": "store_false",
            "dest": "save",
            "help": "write nothing: keep every full-size image in the kernel's memory instead",
        },
    ),
    Argument(
        ("--overwrite",),
        {
            "action": "store_true",
            "help": "the save folder may hold an earlier run: replace it (its PNGs, grids, manifest.jsonl and "
            "index.html; other files stay). Without it such a folder is refused: runs are never mixed",
        },
    ),
    Argument(("--allow-pickle",), {"action": "store_true", "help": "allow loading pickle (.bin/.ckpt) weights"}),
    Argument(
        ("--param",),
        {
            "action": "append",
            "metavar": "NAME=VALUE",
            "dest": "params",
            "help": "another pipeline call argument, e.g. true_cfg_scale=4.0 or max_sequence_length=256 "
            "(VALUE a Python literal; repeatable; checked against the pipeline's __call__)",
        },
    ),
    Argument(
        ("--scheduler",),
        {"metavar": "CLASS", "help": "swap in a compatible scheduler, e.g. EulerDiscreteScheduler (from_config)"},
    ),
    Argument(
        ("--lora",),
        {
            "action": "append",
            "metavar": "SOURCE[:SCALE]",
            "dest": "loras",
            "help": "apply a LoRA (a .safetensors file or folder, or a hub id owner/repo[/file.safetensors]) at "
            "SCALE (default 1); repeatable. Warm workers load each once and swap them between cells",
        },
    ),
    Argument(
        ("--fuse-lora",),
        {"action": "store_true", "help": "fuse the active LoRAs into the weights (faster while they stay the same)"},
    ),
    Argument(
        ("--prompt-syntax",),
        {
            "choices": PROMPT_SYNTAXES,
            "default": "weighted",
            "help": "weighted: (word:1.3), (word), [word] and prompts past 77 tokens on CLIP models (SD1.x, SDXL), "
            "through compel; plain: the prompt as written",
        },
    ),
    Argument(
        ("--sweep",),
        {
            "action": "append",
            "metavar": "NAME=V1,V2",
            "help": "compare values as a labelled grid (repeatable, up to 3 axes): seed, steps, guidance, "
            "size (512x768), negative, scheduler, lora (scales of the one --lora, or none,a.safetensors,...), "
            "lora:NAME or a --param name; integer ranges as A..B. Every image of "
            "prompt j (image k) keeps seed seed+j*K+k whatever the other axes; a swept seed sets it",
        },
    ),
    Argument(("--variant",), {"metavar": "NAME", "help": "weights variant for from_pretrained, e.g. fp16"}),
    Argument(("--revision",), {"metavar": "REV", "help": "hub revision (branch, tag or commit) for from_pretrained"}),
    Argument(
        ("--preview",),
        {
            "default": "auto",
            "metavar": "auto|taesd[=PATH]|off",
            "help": "show each image while it denoises: auto (a cheap linear latent->RGB map, every few steps), "
            "taesd (a tiny autoencoder, AutoencoderTiny: the family's published one, or PATH / a hub id) or off",
        },
    ),
    Argument(
        ("--variation-seed",),
        {
            "type": int,
            "metavar": "V",
            "help": "variations: image i's initial noise blended (slerp) with the noise of seed V+i, by "
            "--variation-strength; the image's own seed stays (res[i].vary() sweeps V)",
        },
    ),
    Argument(
        ("--variation-strength",),
        {
            "type": float,
            "metavar": "S",
            "help": "how far towards the variation seed's noise: 0 is the image itself (default 0.2)",
        },
    ),
    Argument(
        ("--init",),
        {
            "metavar": "IMAGE",
            "help": "refine (image-to-image, the same pipeline's img2img form): an image file, or in the magic "
            "NAME / NAME[i] of the namespace (a record such as res[3], a PIL image, or a list: one per prompt)",
        },
    ),
    Argument(
        ("--compile",),
        {
            "action": "store_true",
            "help": "compile the denoiser once per warm worker (its repeated blocks, else all of it, with "
            "torch.compile): the first cell pays the compile, later cells run faster; a new size recompiles",
        },
    ),
    Argument(
        ("--cache",),
        {
            "metavar": "fbc[=T]|taylorseer|off",
            "help": "skip denoising work with diffusers' step cache (DiT models such as Flux): fbc[=THRESHOLD] "
            "(first-block cache, default 0.05; higher skips more), taylorseer, or off; each image records "
            "how many steps were skipped",
        },
    ),
    Argument(("--strength",), {"type": float, "metavar": "S", "help": "with --init: how much is redone, 0-1"}),
    Argument(
        ("--upscale",),
        {"type": float, "metavar": "F", "help": "with --init: resize it by F first (2: a hires-fix pass)"},
    ),
)


def magic_decorators() -> Callable[[Any], Any]:
    """One decorator that adds every option to a ``magic_arguments`` function, in table order."""
    from IPython.core.magic_arguments import argument

    def decorate(func: Any) -> Any:
        # magic_arguments lists arguments in decorator order top to bottom, i.e. reverse application order
        for arg in reversed(OPTION_ARGUMENTS):
            func = argument(*arg.flags, **arg.kwargs)(func)
        return func

    return decorate


def add_to_parser(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """Add the options to an ``argparse`` parser, except those whose ``dest`` is in ``skip``."""
    for arg in OPTION_ARGUMENTS:
        if arg.dest not in skip:
            parser.add_argument(*arg.flags, **arg.kwargs)


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    """``GenerateOptions`` from parsed arguments (of either front end)."""
    values = {arg.dest: getattr(args, arg.dest) for arg in OPTION_ARGUMENTS}
    values["params"] = parse_params(values["params"] or [])
    values["sweep"] = parse_sweep(values["sweep"] or [])
    values["loras"] = parse_loras(values["loras"] or [])
    return GenerateOptions(**values)


def parse_params(items: list[str]) -> dict[str, object]:
    """``["true_cfg_scale=4.0", "clip_skip=2"]`` → a dict; values are Python literals (``ast.literal_eval``).

    Never ``eval``: a cell's options must not run code. A bare word that is no literal (``pil``) is a string.
    """
    params: dict[str, object] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise NbdistUsageError(f"--param {item!r}: write NAME=VALUE, e.g. --param true_cfg_scale=4.0")
        try:
            params[name] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError) as exc:
            if not raw.strip().replace("_", "").replace("-", "").isalnum():
                raise NbdistUsageError(f"--param {name}: {raw!r} is not a Python literal") from exc
            params[name] = raw.strip()
    return params


def _typed_flag(flags: tuple[str, ...], tokens: Sequence[str]) -> str | None:
    """Which of ``flags`` the user wrote among ``tokens`` (``-n 0``, ``-n0``, ``--num-processes=0``), if any."""
    for token in tokens:
        for flag in flags:
            if token == flag or token.startswith(flag + "=") or (len(flag) == 2 and token.startswith(flag)):
                return flag
    return None


def as_typed(message: str, tokens: Sequence[str], extra: Sequence[tuple[str, ...]] = ()) -> str:
    """An error message naming each flag as the user spelled it.

    ``GenerateOptions.validate`` knows fields, not spellings, and names a flag by its last (long)
    form: ``--num-processes must be a positive integer`` for a user who wrote ``-n 0``, who then looks
    for a flag they never typed. ``tokens`` are the words of the command line; ``extra`` adds flag
    groups declared elsewhere (the CLI's ``-o/--out/--save-dir``).
    """
    for flags in [*(arg.flags for arg in OPTION_ARGUMENTS), *extra]:
        canonical = flags[-1]
        if len(flags) < 2 or not re.search(rf"(?<![\w-]){re.escape(canonical)}(?![\w-])", message):
            continue
        typed = _typed_flag(flags, tokens)
        if typed is not None and typed != canonical:
            message = re.sub(rf"(?<![\w-]){re.escape(canonical)}(?![\w-])", typed, message)
    return message
