"""What a checkpoint's weights weigh at the run's dtype, known without loading it and without ``torch.cuda``.

Sources, best first: a pipeline already in the kernel, counted tensor by tensor; a folder (or the local
hub cache's snapshot of a hub id) from its ``*.safetensors`` sizes, scaled from each file's stored dtype
(read from its header) to the run's; a well-known hub id not downloaded yet from a small built-in table.
Anything else is not estimated, so ``memory_fit`` never refuses it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...options import GenerateOptions
from ...placement import quantized_components

__all__ = [
    "GB",
    "KNOWN",
    "Component",
    "ModelSize",
    "estimate",
    "from_folder",
    "from_pipeline",
    "known_model",
    "safetensors_bytes",
]

GB = 10**9
SHRINK = {"nf4": 0.28, "int8": 0.53, "torchao-int8wo": 0.53}  # quantized size / bf16 size, norms kept
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class Component:
    """One model of a pipeline: its weights at the run's dtype (unquantized) and its class."""

    name: str
    nbytes: int
    cls: str = ""

    @property
    def role(self) -> str:
        """denoiser, vae or other: which working memory comes with it while it runs."""
        if self.name.startswith(("unet", "transformer", "prior", "decoder")):
            return "denoiser"
        return "vae" if self.name.startswith(("vae", "movq")) else "other"


@dataclass(frozen=True)
class ModelSize:
    """A checkpoint's weights at one dtype, where that knowledge came from, and its usual image side."""

    name: str
    components: tuple[Component, ...]
    dtype: str
    side: int = 1024
    source: str = "files"
    in_kernel: bool = False  # the kernel already holds it: loading costs no more host memory
    vae_upcast: bool = False  # run in float16, its pipeline decodes in float32 (SDXL's VAE ``force_upcast``)

    @property
    def total(self) -> int:
        return sum(c.nbytes for c in self.components)

    def sizes(self, quantize: str | None) -> dict[str, int]:
        """Each component's GPU bytes, the quantized ones shrunk from their 16-bit size."""
        if quantize is None:
            return {c.name: c.nbytes for c in self.components}
        chosen = set(quantized_components({c.name: c.cls for c in self.components}))
        to16 = 2 / _DTYPE_BYTES.get(self.dtype, 2)
        return {
            c.name: int(c.nbytes * to16 * SHRINK[quantize]) if c.name in chosen else c.nbytes for c in self.components
        }


def safetensors_bytes(path: Path, dtype: str) -> int:
    """Bytes of one ``.safetensors`` file's tensors once loaded in ``dtype``, from its size and header.

    The header (8-byte little-endian length, then JSON) says each tensor's stored dtype and byte range;
    floating tensors are converted to ``dtype`` by ``from_pretrained``, others (ids, ints) kept. The data
    size is the file's size less the header, scaled by the header's mix: no tensor is read, no torch.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length)) if 0 < length < 100 * 2**20 else {}
    stored = converted = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        start, end = entry.get("data_offsets", (0, 0))
        item = _STORED_BYTES.get(str(entry.get("dtype")))
        stored += end - start
        converted += (end - start) * _DTYPE_BYTES[dtype] // item if item else end - start
    data = max(0, size - 8 - length)
    return data if stored == 0 else int(data * converted / stored)


def _weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The files ``from_pretrained`` would load: the variant's (``x.fp16.safetensors``,
    ``x.fp16-00001-of-00002.safetensors``) when asked for and present, else the plain ones; pickle
    files only where a component has no safetensors at all."""
    for suffix in (".safetensors", ".bin"):
        files = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())
        plain = [p for p in files if p.name.count(".") == 1]
        if variant:
            chosen = [p for p in files if f".{variant}." in p.name or f".{variant}-" in p.name]
            files = chosen or plain
        else:
            files = plain or files
        if files:
            return files
    return []


def _components_of(folder: Path) -> dict[str, str]:
    """``{component: class name}`` of the models in a pipeline folder (``model_index.json``)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {
        name: str(value[1])
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0]
    }


def _default_side(folder: Path) -> int:
    """The denoiser's native image side (``sample_size`` x VAE scale factor), else 1024."""
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        scale = 2 ** (len(vae.get("block_out_channels", [1] * 4)) - 1)
        for part in ("unet", "transformer"):
            path = folder / part / "config.json"
            if path.exists():
                sample = json.loads(path.read_text(encoding="utf-8")).get("sample_size")
                if isinstance(sample, int) and sample > 0:
                    return sample * scale
    except (OSError, ValueError, TypeError):
        pass
    return 1024


def from_folder(
    folder: Path, dtype: str, variant: str | None, name: str, *, complete: bool = False
) -> ModelSize | None:
    """A pipeline folder's weights; None without ``model_index.json``, or (``complete``) when a model's
    weights are missing (a partly downloaded hub snapshot says nothing reliable)."""
    classes = _components_of(folder)
    if not classes:
        return None
    parts = []
    for part, cls in classes.items():
        files = _weight_files(folder / part, variant) if (folder / part).is_dir() else []
        if not files:
            if complete and (folder / part / "config.json").exists():
                return None
            continue
        nbytes = sum(safetensors_bytes(f, dtype) if f.suffix == ".safetensors" else f.stat().st_size for f in files)
        parts.append(Component(part, nbytes, cls))
    upcast = upcasts(_class_name(folder), _force_upcast(folder))
    return ModelSize(name, tuple(parts), dtype, _default_side(folder), "files", vae_upcast=upcast)


def upcasts(pipeline_class: str, force_upcast: bool) -> bool:
    """Whether this pipeline decodes a float16 VAE in float32: the SDXL family's pipelines do, when the
    VAE's config says ``force_upcast`` (SDXL's own VAE; not madebyollin's fp16-fix)."""
    xl = "XL" in pipeline_class or pipeline_class.startswith("Kolors")
    return force_upcast and (xl or pipeline_class == "StableDiffusionUpscalePipeline")


def _class_name(folder: Path) -> str:
    try:
        return str(json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _force_upcast(folder: Path) -> bool:
    """The VAE config's ``force_upcast`` (``AutoencoderKL``'s default, True, where the key is missing)."""
    try:
        return bool(json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8")).get("force_upcast", True))
    except (OSError, ValueError, AttributeError):
        return False


def from_pipeline(pipe: Any, name: str, dtype: str) -> ModelSize:
    """A loaded pipeline's weights, counted tensor by tensor (exact for what the workers will place)."""
    parts = []
    for part, module in getattr(pipe, "components", {}).items():
        if hasattr(module, "parameters") and hasattr(module, "buffers"):
            tensors = [*module.parameters(), *module.buffers()]
            parts.append(Component(part, sum(t.numel() * t.element_size() for t in tensors), type(module).__name__))
    scale = getattr(pipe, "vae_scale_factor", 8)
    sample = getattr(getattr(getattr(pipe, "unet", None), "config", None), "sample_size", None)
    side = sample * scale if isinstance(sample, int) and isinstance(scale, int) else 1024
    force = bool(getattr(getattr(getattr(pipe, "vae", None), "config", None), "force_upcast", False))
    upcast = upcasts(type(pipe).__name__, force)
    return ModelSize(name, tuple(parts), dtype, side, "loaded pipeline", in_kernel=True, vae_upcast=upcast)


_CLIP_L = {"text_encoder": ("CLIPTextModel", 0.25)}
_SD3_ENCODERS = {
    "text_encoder": ("CLIPTextModelWithProjection", 0.25),
    "text_encoder_2": ("CLIPTextModelWithProjection", 1.39),
    "text_encoder_3": ("T5EncoderModel", 9.5),
    "vae": ("AutoencoderKL", 0.17),
}
_FLUX = (
    "FLUX.1",
    1024,
    {"transformer": ("FluxTransformer2DModel", 23.8), "text_encoder_2": ("T5EncoderModel", 9.5), **_CLIP_L},
)
_SD35_MEDIUM = ("SD3.5-medium", 1024, {"transformer": ("SD3Transformer2DModel", 5.0), **_SD3_ENCODERS})
_SD35_LARGE = ("SD3.5-large", 1024, {"transformer": ("SD3Transformer2DModel", 16.3), **_SD3_ENCODERS})
_SDXL = (
    "SDXL",
    1024,
    {"unet": ("UNet2DConditionModel", 5.14), **_CLIP_L, "text_encoder_2": ("CLIPTextModelWithProjection", 1.39)},
)
_SD15 = ("SD1.5", 512, {"unet": ("UNet2DConditionModel", 1.72), **_CLIP_L})
# Well-known checkpoints not downloaded yet: (short name, native side, {component: (class, GB at 16 bits)}).
# From the repositories' file sizes (fp16/bf16 weights); every entry has a 0.17 GB VAE unless it says one.
KNOWN: dict[str, tuple[str, int, dict[str, tuple[str, float]]]] = {
    "black-forest-labs/flux.1-schnell": ("FLUX.1-schnell", *_FLUX[1:]),
    "black-forest-labs/flux.1-dev": ("FLUX.1-dev", *_FLUX[1:]),
    "stabilityai/stable-diffusion-3.5-medium": _SD35_MEDIUM,
    "stabilityai/stable-diffusion-3.5-large": _SD35_LARGE,
    "stabilityai/stable-diffusion-3.5-large-turbo": ("SD3.5-large-turbo", *_SD35_LARGE[1:]),
    "stabilityai/stable-diffusion-xl-base-1.0": _SDXL,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": _SD15,
    "runwayml/stable-diffusion-v1-5": _SD15,
    "compvis/stable-diffusion-v1-4": ("SD1.4", *_SD15[1:]),
}


def known_model(model_id: str, dtype: str) -> ModelSize | None:
    """A well-known hub checkpoint from the built-in table, at ``dtype``; None for any other id."""
    entry = KNOWN.get(model_id.lower())
    if entry is None:
        return None
    name, side, parts = entry
    parts = {"vae": ("AutoencoderKL", 0.17), **parts}
    per16 = _DTYPE_BYTES[dtype] / 2
    components = tuple(Component(part, int(gb * GB * per16), cls) for part, (cls, gb) in parts.items())
    return ModelSize(name, components, dtype, side, "built-in table", vae_upcast=name == "SDXL")


def _hub_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The local cache's snapshot folder of a hub id (no network), or None if not downloaded."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, "model_index.json", revision=revision)
    except Exception:  # a malformed id, an unreadable cache: no estimate, never a refusal
        return None
    return Path(found).parent if isinstance(found, str) else None


def _in_kernel_cache(model: str, dtype: str) -> Any:
    """The pipeline the kernel already loaded for ``model`` at ``dtype`` (``pipelines.cached_pipeline``)."""
    from ... import pipelines

    cache = getattr(pipelines, "_CACHE", None)
    if not isinstance(cache, Mapping):
        return None
    where = os.path.abspath(os.path.expanduser(model)) if pipelines.looks_like_path(model) else model
    for key, pipe in list(cache.items()):
        if isinstance(key, tuple) and key[:2] == (where, dtype):
            return pipe
    return None


def estimate(model_or_pipe: Any, dtype: str, options: GenerateOptions) -> ModelSize | None:
    """The weights of what this run loads, from the best source there is; None when nothing is known."""
    from ...pipelines import looks_like_path

    if not isinstance(model_or_pipe, str | os.PathLike):
        config = getattr(model_or_pipe, "config", None)
        name = getattr(config, "_name_or_path", None) or type(model_or_pipe).__name__
        return from_pipeline(model_or_pipe, _short(str(name)), dtype)
    model = os.fspath(model_or_pipe)
    loaded = _in_kernel_cache(model, dtype)
    if loaded is not None:
        return from_pipeline(loaded, _short(model), dtype)
    folder = Path(os.path.expanduser(model))
    if folder.is_dir():
        return from_folder(folder, dtype, options.variant, _short(model))
    if looks_like_path(model):
        return None
    snapshot = _hub_snapshot(model, options.revision)
    sized = from_folder(snapshot, dtype, options.variant, _short(model), complete=True) if snapshot else None
    if sized is not None:
        return sized
    known = known_model(model, dtype)
    return replace(known, name=_short(model)) if known is not None else None


def _short(model: str) -> str:
    """``black-forest-labs/FLUX.1-schnell`` → ``FLUX.1-schnell``; a folder → its name."""
    return os.path.basename(os.path.normpath(model)) or model
