"""LoRAs by flag: ``--lora SOURCE[:SCALE]`` parsed and checked in the kernel, before anything starts.

Why here and not in the workers: a missing file, a pickle file without ``--allow-pickle``, a sweep over
a LoRA that was never named, or a LoRA made for another model must each be one line before a worker
is forked or a run is queued. The workers only load and activate (``worker/adapters.py``); the LoRAs
are deliberately not part of the warm pool's key, so changing them never replaces the workers.

A source is a local ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors``, or a
hub id (``owner/repo``, or ``owner/repo/file.safetensors`` for diffusers' ``weight_name=``).
Imports neither IPython nor CUDA (torch only inside ``check_lora_fits``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NbdistUsageError

__all__ = [
    "PROMPT_SYNTAXES",
    "LoraSource",
    "active_loras",
    "adapter_name",
    "check_lora_fits",
    "check_lora_sweep",
    "is_lora_axis",
    "lora_label",
    "lora_sources",
    "parse_lora",
    "parse_loras",
]

PROMPT_SYNTAXES = ("weighted", "plain")  # --prompt-syntax (worker/prompt_weights.py)
_WEIGHTS = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes in a folder
_PICKLE = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class LoraSource:
    """Where a LoRA's weights are: ``load_lora_weights(location, weight_name=weight_name)``."""

    source: str  # as the user wrote it
    location: str  # a folder or a hub id
    weight_name: str | None
    local: bool


def parse_lora(text: str) -> tuple[str, float]:
    """``"red.safetensors:0.8"`` → ``("red.safetensors", 0.8)``; no scale is 1.0.

    The scale is what follows the last colon only when it reads as a number, so a path or a hub id
    with a colon in it still works without a scale.
    """
    text = text.strip()
    source, sep, tail = text.rpartition(":")
    if sep and source:
        try:
            return source.strip(), float(tail)
        except ValueError:
            pass
    if not text:
        raise NbdistUsageError("--lora: write SOURCE[:SCALE], e.g. --lora red.safetensors:0.8")
    return text, 1.0


def parse_loras(value: Mapping[str, float] | list[str] | tuple[str, ...] | str | None) -> dict[str, float]:
    """``--lora`` items, a ``{"source": scale}`` dict or one string → ``{source: scale}`` in the order given."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    items = list(value.items()) if isinstance(value, Mapping) else [parse_lora(v) for v in value]
    loras: dict[str, float] = {}
    for source, scale in items:
        if not isinstance(scale, int | float) or isinstance(scale, bool):
            raise NbdistUsageError(f"--lora {source}: the scale must be a number, got {scale!r}")
        if source in loras:
            raise NbdistUsageError(f"--lora {source} given twice")
        loras[str(source)] = float(scale)
    return loras


def lora_source(source: str, allow_pickle: bool = False) -> LoraSource:
    """Resolve a source to what ``load_lora_weights`` takes; a local one must exist and be safetensors."""
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        files = sorted(p.name for p in path.glob("*.safetensors"))
        if not files:
            raise NbdistUsageError(f"--lora {source}: the folder holds no .safetensors file")
        return LoraSource(source, str(path), _WEIGHTS if _WEIGHTS in files else files[0], True)
    if path.is_file():
        if path.suffix in _PICKLE and not allow_pickle:
            raise NbdistUsageError(f"--lora {source}: a pickle file; convert it to .safetensors or add --allow-pickle")
        return LoraSource(source, str(path.parent), path.name, True)
    looks_local = source.startswith((".", "/", "~")) or source.endswith((".safetensors", *_PICKLE))
    parts = source.split("/")
    if len(parts) == 3 and parts[2].endswith(".safetensors") and not source.startswith((".", "/", "~")):
        return LoraSource(source, "/".join(parts[:2]), parts[2], False)  # owner/repo/file.safetensors
    if looks_local or len(parts) != 2:
        raise NbdistUsageError(f"--lora {source}: no such file or folder (nor a hub id owner/repo)")
    return LoraSource(source, source, None, False)


def adapter_name(source: str) -> str:
    """A stable adapter name for a source: its stem (readable in errors) and a hash of where and which file.

    The file's size and time are in the hash, so a LoRA retrained in place is loaded again by warm
    workers instead of being served from the old weights.
    """
    path = Path(os.path.expanduser(source))
    identity = source
    if path.exists():
        target = path / _WEIGHTS if path.is_dir() and (path / _WEIGHTS).exists() else path
        stat = target.stat()
        identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    stem = re.sub(r"\W", "_", path.stem if path.suffix else path.name)[:40] or "lora"
    return f"{stem}_{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def lora_label(source: str) -> str:
    """How a LoRA reads in captions and grid labels: its file or folder stem, not its whole path."""
    if source == "none":
        return "none"
    path = Path(source)
    return path.stem if path.suffix == ".safetensors" else path.name or source


def is_lora_axis(name: str) -> bool:
    """``lora`` or ``lora:NAME``: sweep axes that change the active LoRAs, not a call argument."""
    return name == "lora" or name.startswith("lora:")


def _named(loras: Mapping[str, float], name: str) -> str:
    """The ``--lora`` source that ``lora:NAME`` means: the source itself or its stem."""
    for source in loras:
        if name in (source, lora_label(source)):
            return source
    given = ", ".join(lora_label(s) for s in loras) or "none"
    raise NbdistUsageError(f"--sweep lora:{name}: no --lora with that name (given: {given})")


def active_loras(loras: Mapping[str, float], settings: Mapping[str, Any]) -> dict[str, float]:
    """The LoRAs and scales one image is made with: the ``--lora`` set changed by its sweep values.

    ``lora=0.4`` sets the scale of the one ``--lora``; ``lora=red.safetensors`` uses that LoRA alone
    (at its ``--lora`` scale, else 1), ``lora=none`` none; ``lora:NAME=0.4`` sets one of several.
    """
    active = dict(loras)
    for name, value in settings.items():
        if name == "lora":
            if isinstance(value, int | float):
                active = {source: float(value) for source in loras}
            elif value == "none":
                active = {}
            else:
                source, scale = parse_lora(str(value))
                explicit = source != str(value).strip()  # a:0.5 names its own scale
                active = {source: scale if explicit else loras.get(source, scale)}
        elif name.startswith("lora:"):
            active[_named(loras, name[5:])] = float(value)
    return active


def check_lora_sweep(loras: Mapping[str, float], axes: Mapping[str, list[Any]]) -> list[str]:
    """Check the LoRA axes against the ``--lora`` set; returns every source a run may load."""
    sources = list(loras)
    for name, values in axes.items():
        if name == "lora":
            numbers = [v for v in values if isinstance(v, int | float)]
            if numbers and len(numbers) != len(values):
                raise NbdistUsageError("--sweep lora: give scales (0,0.5,1) or LoRAs (none,a.safetensors), not both")
            if numbers and len(loras) != 1:
                raise NbdistUsageError(
                    f"--sweep lora=SCALES needs exactly one --lora (got {len(loras)}); "
                    "with several, sweep one of them: --sweep lora:NAME=0,0.5,1"
                )
            sources += [parse_lora(str(v))[0] for v in values if not isinstance(v, int | float) and v != "none"]
        elif name.startswith("lora:"):
            _named(loras, name[5:])
            if not all(isinstance(v, int | float) for v in values):
                raise NbdistUsageError(f"--sweep {name}: every value must be a scale (a number)")
    return list(dict.fromkeys(sources))


def lora_sources(sources: list[str], allow_pickle: bool) -> list[LoraSource]:
    """Every source resolved and checked (files exist, safetensors unless ``--allow-pickle``)."""
    return [lora_source(s, allow_pickle) for s in sources]


def check_lora_fits(pipe: Any, model: str, lora: LoraSource) -> None:
    """A local LoRA must match the pipeline: every layer it changes exists with the same features.

    Read with the pipeline class's own ``lora_state_dict`` (which converts Kohya and other formats to
    diffusers' keys), compared with the layers' weight shapes; nothing is loaded into ``pipe``, so its
    fingerprint (and with it the warm workers) stays as it is. Keys it cannot place are left to the
    workers' ``load_lora_weights``, which reports them itself.
    """
    if not lora.local:
        return
    if not hasattr(type(pipe), "lora_state_dict"):
        raise NbdistUsageError(f"--lora: {type(pipe).__name__} ({model}) does not take LoRAs")
    loaded = type(pipe).lora_state_dict(lora.location, weight_name=lora.weight_name)
    state = loaded[0] if isinstance(loaded, tuple) else loaded
    for key, tensor in state.items():
        problem = _misfit(pipe, key, tuple(tensor.shape))
        if problem:
            raise NbdistUsageError(f"--lora {lora.source} does not match {model}: {problem}")


_SUFFIXES = {
    ".lora_A.weight": 1,
    ".lora_B.weight": 0,
    ".lora.down.weight": 1,
    ".lora.up.weight": 0,
    ".lora_linear_layer.down.weight": 1,
    ".lora_linear_layer.up.weight": 0,
}


def _misfit(pipe: Any, key: str, shape: tuple[int, ...]) -> str | None:
    """Why one LoRA tensor does not fit ``pipe`` (a missing layer, other features), or None."""
    suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
    component, _, path = key.partition(".")
    if suffix is None or not path:
        return None
    module = getattr(pipe, component, None)
    if module is None or not hasattr(module, "get_submodule"):
        return f"it changes {component!r}, which {type(pipe).__name__} has not"
    layer_path = path[: -len(suffix)]
    try:
        weight = module.get_submodule(layer_path).weight
    except (AttributeError, ValueError):
        return f"{component} has no layer {layer_path}"
    axis = _SUFFIXES[suffix]
    if len(shape) <= axis or weight.shape[axis] != shape[axis]:
        side = "inputs" if axis == 1 else "outputs"
        return f"{component}.{layer_path} has {weight.shape[axis]} {side}, the LoRA {shape[axis]}"
    return None
