"""Generation options: one dataclass, validated once, shared by the magic, the CLI and the workers.

Why a dataclass and not a dict: the workers receive it through fork, the CLI and the magic build it
from their own argument parsers, and ``validate`` gives every entry point the same short messages
before any process starts.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .cache_choice import parse_cache
from .errors import NbdistUsageError
from .placement import validate_placement
from .preview_choice import parse_preview

__all__ = ["DTYPES", "GenerateOptions", "NbdistUsageError"]

DTYPES = ("float16", "bfloat16", "float32")
SCHEDULES = ("static", "dynamic")
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class GenerateOptions:
    """Everything that decides what is generated and how, except the model and the prompts."""

    steps: int | None = None  # None: the checkpoint's recommended value, else the pipeline's default
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    negative: str | None = None
    seed: int | None = None
    images_per_prompt: int = 1
    batch_size: int = 1
    num_processes: int | None = None
    dtype: str | None = None
    device: str = "auto"
    save_dir: str | None = None  # None: a new folder under nbdist-runs/ (parent/runs/folders.py), unless not save
    save: bool = True  # False (--no-save): nothing written, every image kept in memory
    schedule: str | None = None  # "static" or "dynamic"; None: static, dynamic for a sweep
    allow_pickle: bool = False
    thumbnail_size: int = 256
    params: dict[str, object] = field(default_factory=dict)  # --param NAME=VALUE: more pipeline call arguments
    scheduler: str | None = None  # a compatible scheduler class name, swapped in by the workers
    variant: str | None = None  # from_pretrained(variant=...), e.g. "fp16"
    revision: str | None = None  # from_pretrained(revision=...)
    sweep: dict[str, list[object]] = field(default_factory=dict)  # axis name -> values (--sweep NAME=V1,V2)
    loras: dict[str, float] = field(default_factory=dict)  # --lora SOURCE[:SCALE]: source -> scale (loras.py)
    fuse_lora: bool = False  # fuse the active LoRAs into the workers' weights (faster; a change unfuses first)
    prompt_syntax: str = "weighted"  # "weighted": (word:1.3) and long prompts on CLIP models; "plain": as written
    device_map: str | None = None  # "balanced": one process, the model spread over the GPUs (placement.py)
    max_memory: str | dict[int | str, int | str] | None = None  # "0=10GiB,cpu=30GiB" or a dict, with device_map
    offload: str | None = None  # "model" or "sequential": per worker, components wait in host RAM (placement.py)
    quantize: str | None = None  # "nf4", "int8", "torchao-int8wo": the workers load the model quantized
    vae_tiling: bool = False  # the VAE decodes in tiles: big images need far less GPU memory
    overwrite: bool = False  # save_dir may hold an earlier run: replace its files (else that is refused)
    cluster: str | None = None  # a Ray cluster's address (auto, HOST:PORT): actors there, not forks
    cluster_wait: float = 60.0  # seconds a busy cluster may take to free the actors' GPUs/CPUs (then refused)
    preview: str = "auto"  # --preview auto|taesd[=PATH]|off: the image while it denoises (preview_choice.py)
    variation_seed: int | None = None  # image i's initial noise blended with seed variation_seed + i's
    variation_strength: float | None = None  # how far (slerp) towards that noise: 0 is the image itself
    init: Any = None  # --init: a path, PIL image, ImageRecord or a list (one per prompt); planned: path(s)
    strength: float | None = None  # --strength with --init: how much of the denoising is redone
    upscale: float | None = None  # --upscale with --init: resize the init by this factor first (hires fix)
    compile: bool = False  # --compile: the workers compile the denoiser (its repeated blocks) once, kept warm
    cache: str | float | None = None  # --cache fbc[=T]|taylorseer|off: diffusers' step cache (cache_choice.py)

    def with_(self, **changes: object) -> GenerateOptions:
        """A copy with some fields changed (``dataclasses.replace`` under a shorter name)."""
        return replace(self, **changes)

    def validate(self, *, previous_run: bool = True) -> None:
        """Raise ``NbdistUsageError`` for values that cannot work, whatever the model.

        ``previous_run=False`` leaves the "save_dir already holds a run" check to the caller: under
        torchrun every rank validates, but rank 0 decides that one for all (``launched.py``).
        """
        for name in ("steps", "images_per_prompt", "batch_size"):
            value = getattr(self, name)
            if value is None and name == "steps":
                continue
            if not isinstance(value, int) or value < 1:
                raise NbdistUsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.num_processes is not None and (not isinstance(self.num_processes, int) or self.num_processes < 1):
            raise NbdistUsageError(f"--num-processes must be a positive integer, got {self.num_processes!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise NbdistUsageError(f"--{name} must be a positive integer, got {value!r}")
        if self.guidance is not None and (not isinstance(self.guidance, int | float) or self.guidance < 0):
            raise NbdistUsageError(f"--guidance must be a number >= 0, got {self.guidance!r}")
        for name in self.params:
            if not isinstance(name, str) or not name.isidentifier():
                raise NbdistUsageError(f"--param {name!r}: the name must be a Python identifier")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise NbdistUsageError(f"unknown --dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise NbdistUsageError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise NbdistUsageError(f"unknown --device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise NbdistUsageError(f"--seed must be a non-negative integer, got {self.seed!r}")
        self._check_save_dir(previous_run)
        validate_placement(self)
        if not isinstance(self.cluster_wait, int | float) or self.cluster_wait < 0:
            raise NbdistUsageError(f"--cluster-wait must be >= 0 seconds, got {self.cluster_wait!r}")
        if self.cluster is not None:
            from .cluster_address import check_cluster_options

            check_cluster_options(self)
        parse_preview(self.preview)
        parse_cache(self.cache)
        if not isinstance(self.compile, bool):
            raise NbdistUsageError(f"compile must be True or False, got {self.compile!r}")
        check_variation(self.variation_seed, self.variation_strength, self.sweep)

    def _check_save_dir(self, previous_run: bool) -> None:
        """A folder to save into must be writable and hold no earlier run (unless ``--overwrite``)."""
        if self.save_dir is not None and not self.save:
            raise NbdistUsageError("--no-save and --save-dir contradict each other: choose one")
        if self.save_dir is not None:
            check_writable_dir(Path(self.save_dir))
            if previous_run and not self.overwrite:
                from .parent.output.previous_run import refuse_previous_run

                refuse_previous_run(self.save_dir)

    def check_size(self, vae_scale_factor: int) -> None:
        """Height and width must be multiples of the pipeline's VAE scale factor (8 for SD)."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % vae_scale_factor:
                raise NbdistUsageError(
                    f"--{name} {value} is not a multiple of {vae_scale_factor} (this pipeline's VAE scale factor)"
                )


def check_variation(seed: object, strength: object, sweep: dict[str, list[object]]) -> None:
    """``--variation-seed`` a seed, ``--variation-strength`` in [0, 1], and no strength without a variation seed."""
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise NbdistUsageError(f"--variation-seed must be a non-negative integer, got {seed!r}")
    if strength is not None and (not isinstance(strength, int | float) or not 0 <= strength <= 1):
        raise NbdistUsageError(f"--variation-strength must be a number from 0 to 1, got {strength!r}")
    if (strength is not None or "variation_strength" in sweep) and seed is None and "variation_seed" not in sweep:
        raise NbdistUsageError("--variation-strength needs --variation-seed V (or --sweep variation_seed=...)")


def check_writable_dir(path: Path) -> None:
    """The save folder must exist or be creatable, and be writable: checked before any worker starts."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NbdistUsageError(f"--save-dir {str(path)!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise NbdistUsageError(f"--save-dir {str(path)!r} is not writable")
    # os.access says yes to root everywhere, and knows nothing of read-only mounts or /proc: try it.
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise NbdistUsageError(f"--save-dir {str(path)!r} is not writable") from exc
