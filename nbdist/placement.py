"""``--device-map balanced`` and ``--max-memory``: one pipeline spread over several GPUs.

For a model too big for one GPU, diffusers can place its components (text encoder, UNet, VAE) on
different GPUs with ``from_pretrained(..., device_map="balanced", max_memory=...)``. That is about
fitting, not speed: the components still run one after another. nbdist runs it as a single worker
that loads the model itself (the kernel never touches CUDA), and checks everything here first, so a
typo in ``--max-memory`` or a machine without GPUs is a one-line message, not a traceback from deep
inside accelerate after minutes of loading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import NbdistUsageError

__all__ = [
    "DEVICE_MAPS",
    "OFFLOADS",
    "QUANTIZE",
    "QUANTIZE_BACKENDS",
    "MaxMemory",
    "check_placement",
    "normalise_max_memory",
    "parse_max_memory",
    "parse_size",
    "quantized_components",
    "validate_placement",
]

DEVICE_MAPS = ("balanced",)
# --offload: diffusers' enable_model_cpu_offload / enable_sequential_cpu_offload, one per worker.
OFFLOADS = ("model", "sequential")
# --quantize: the module to find installed (import name, pip name) for each choice. Checked by path only,
# never imported in the kernel (bitsandbytes starts CUDA on import).
QUANTIZE_BACKENDS = {
    "nf4": ("bitsandbytes", "bitsandbytes"),
    "int8": ("bitsandbytes", "bitsandbytes"),
    "torchao-int8wo": ("torchao", "torchao"),
}
QUANTIZE = tuple(QUANTIZE_BACKENDS)
_DENOISERS = ("unet", "transformer", "prior", "decoder")

MaxMemory = dict[int | str, int]

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_EXAMPLE = "e.g. --max-memory 0=10GiB,1=10GiB,cpu=30GiB"


def parse_size(text: str) -> int:
    """``"10GiB"`` → bytes. Units B, KB/MB/GB/TB (powers of 10), KiB/MiB/GiB/TiB (powers of 2)."""
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise NbdistUsageError(
            f"--max-memory: {text!r} is not a size; write a number and a unit such as 10GiB, 500MiB or 8GB"
        )
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise NbdistUsageError(
            f"--max-memory: {text!r} is zero; leave a device out of --max-memory to keep the model off it"
        )
    return size


def _key(text: str) -> int | str:
    key = text.strip().lower()
    if key == "cpu":
        return "cpu"
    if key.isdigit():
        return int(key)
    raise NbdistUsageError(f"--max-memory: device {text.strip()!r} is neither a GPU number (0, 1, ...) nor 'cpu'")


def parse_max_memory(text: str) -> MaxMemory:
    """``"0=10GiB,cpu=30GiB"`` → ``{0: 10737418240, "cpu": 32212254720}`` (bytes), strictly.

    Sizes go to accelerate as integers, so there is one parser, this one, and a unit never means
    something different in another accelerate version.
    """
    if not text or not text.strip():
        raise NbdistUsageError(f"--max-memory is empty; {_EXAMPLE}")
    result: MaxMemory = {}
    for entry in text.split(","):
        if not entry.strip():
            raise NbdistUsageError(f"--max-memory {text!r}: empty entry (a stray comma?); {_EXAMPLE}")
        if "=" not in entry:
            raise NbdistUsageError(f"--max-memory: {entry.strip()!r} has no '='; write DEVICE=SIZE, {_EXAMPLE}")
        device, _, size = entry.partition("=")
        key = _key(device)
        if key in result:
            raise NbdistUsageError(f"--max-memory: device {key!r} is given twice")
        result[key] = parse_size(size)
    return result


def normalise_max_memory(value: str | Mapping[Any, Any] | None) -> MaxMemory | None:
    """Accept the CLI/magic string or a dict (the Python API); return ``{device: bytes}``."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_max_memory(value)
    if not isinstance(value, Mapping) or not value:
        raise NbdistUsageError(f"max_memory must be a non-empty dict or a string; {_EXAMPLE}")
    result: MaxMemory = {}
    for device, size in value.items():
        key = device if isinstance(device, int) and not isinstance(device, bool) and device >= 0 else None
        if key is None:
            key = _key(str(device))
        if key in result:
            raise NbdistUsageError(f"--max-memory: device {key!r} is given twice")
        exact = isinstance(size, int) and not isinstance(size, bool) and size > 0
        result[key] = size if exact else parse_size(str(size))
    return result


def quantized_components(components: Mapping[str, str]) -> list[str]:
    """Which components ``--quantize`` shrinks, from ``{name: class name}`` (``model_index.json``'s entries).

    The denoiser (UNet or transformer) and the large text encoders (T5, LLMs) hold nearly all the
    weights; CLIP encoders and the VAE are small, and quantizing them costs quality for no room. The
    memory plan and the workers both use this list, so the estimate describes what is really loaded.
    """
    return [
        name
        for name, cls in components.items()
        if name.startswith(_DENOISERS) or (name.startswith("text_encoder") and not str(cls).startswith("CLIP"))
    ]


def _validate_memory_options(options: Any) -> None:
    """--offload / --quantize / --vae-tiling values, and the combinations that cannot work."""
    offload, quantize = getattr(options, "offload", None), getattr(options, "quantize", None)
    if offload is not None and offload not in OFFLOADS:
        raise NbdistUsageError(f"unknown --offload {offload!r}; choose one of {', '.join(OFFLOADS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise NbdistUsageError(f"unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    for flag, value in (("--offload", offload), ("--quantize", quantize)):
        if value is not None and options.device == "cpu":
            raise NbdistUsageError(f"{flag} needs a GPU; drop --device cpu or drop {flag}")
    if offload is not None and options.device_map is not None:
        raise NbdistUsageError(
            "--offload and --device-map both decide where the weights live; use one (--offload for one "
            "model per GPU, --device-map balanced for one model spread over the GPUs)"
        )
    if not isinstance(getattr(options, "vae_tiling", False), bool):
        raise NbdistUsageError(f"vae_tiling must be True or False, got {options.vae_tiling!r}")


def validate_placement(options: Any) -> None:
    """Checks that need no hardware: called by ``GenerateOptions.validate``."""
    _validate_memory_options(options)
    device_map, max_memory = options.device_map, options.max_memory
    if device_map is None:
        if max_memory is not None:
            raise NbdistUsageError("--max-memory only applies with --device-map balanced")
        return
    if device_map not in DEVICE_MAPS:
        raise NbdistUsageError(f"unknown --device-map {device_map!r}; choose one of {', '.join(DEVICE_MAPS)}")
    if options.device == "cpu":
        raise NbdistUsageError("--device-map balanced places the model on GPUs; drop --device cpu")
    if options.num_processes not in (None, 1):
        raise NbdistUsageError(
            f"--device-map balanced runs one process that holds the model across all GPUs; -n {options.num_processes} "
            "does not apply (drop -n)"
        )
    if options.schedule not in (None, "static"):
        raise NbdistUsageError("--device-map balanced runs one process; --schedule dynamic does not apply")
    memory = normalise_max_memory(max_memory)
    if memory is not None and not any(isinstance(k, int) for k in memory):
        raise NbdistUsageError("--max-memory names no GPU; give at least one, e.g. 0=10GiB")


def check_placement(options: Any, gpus: int, *, launched_processes: int = 1) -> None:
    """The checks that depend on this machine: GPUs visible, GPU numbers, launcher's process count.

    ``gpus`` is the number of GPUs this process can see, counted without initialising CUDA.
    """
    if options.device_map is None:
        return
    if gpus == 0:
        raise NbdistUsageError(
            "--device-map balanced spreads the model over GPUs, and no GPU is visible here. "
            "Drop --device-map to run on the CPU."
        )
    if launched_processes > 1:
        raise NbdistUsageError(
            f"--device-map balanced runs one process that holds the model across all GPUs, but this launcher "
            f"started {launched_processes}; run it without torchrun/accelerate launch (or with one process)"
        )
    memory = normalise_max_memory(options.max_memory) or {}
    too_high = sorted(k for k in memory if isinstance(k, int) and k >= gpus)
    if too_high:
        raise NbdistUsageError(
            f"--max-memory names GPU {too_high[0]}, but only {gpus} GPU(s) are visible (numbered 0-{gpus - 1})"
        )
