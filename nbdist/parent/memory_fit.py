"""Will the model fit? Estimated before anything starts, refused in one line naming the flags that fit.

A model too big for its GPU otherwise fails minutes later, deep in a worker, with a CUDA out-of-memory
traceback, after the kernel has loaded tens of GB for nothing. So the plan estimates each worker's GPU
memory (and the host's, which offloading and the kernel's own copy use) from what is known without
loading anything and without ``torch.cuda``:

- the weights: a pipeline already in the kernel is counted parameter by parameter; a folder (or the
  local hub cache's snapshot of a hub id) from its ``*.safetensors`` file sizes, scaled from the stored
  dtype (read from each file's header) to the run's; a well-known hub id not downloaded yet from a
  small built-in table; anything else is not estimated and never refused;
- working memory: ``DENOISE_WORKING`` for the denoiser's activations and ``DECODE_WORKING`` for the VAE
  decode, each for one 1024x1024 image, scaled by pixels and batch size (rough, and documented as such);
- the GPUs' free memory from ``nvidia-smi`` (``gpus.query_gpus``) and the host's available RAM.

The same arithmetic picks the flags to suggest and renders the README's "GPUs and big models" table
(``fit_table``), so the advice, the refusals and the documentation cannot disagree.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from ..options import GenerateOptions, NbdistUsageError
from ..placement import QUANTIZE_BACKENDS, normalise_max_memory, quantized_components
from .gpus import GpuQuery, query_gpus

__all__ = [
    "Component",
    "Machine",
    "ModelSize",
    "Setting",
    "check_fit",
    "check_memory_options",
    "estimate",
    "fit_table",
    "gpu_need",
    "host_need",
    "known_model",
    "refusal",
    "safetensors_bytes",
]

GB = 10**9
GiB = 2**30
CUDA_CONTEXT = 300 * 10**6  # a process's CUDA context and allocator before any weight (lazy module loading)
DENOISE_WORKING = 1 * GB  # the denoiser's activations for one 1024x1024 image (attention, skip tensors)
DECODE_WORKING = 3 * GB // 2  # the VAE decode of one 1024x1024 image: its activations are the largest
LARGEST_LAYER = 1 * GB  # what sequential offload holds on the GPU at once (one block, roughly)
TILE_PIXELS = 512 * 512  # --vae-tiling decodes tiles of about this size, so its decode memory stops growing
SHRINK = {"nf4": 0.28, "int8": 0.53, "torchao-int8wo": 0.53}  # quantized size / bf16 size, norms kept
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_ONE_MEGAPIXEL = 1024 * 1024


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


@dataclass(frozen=True)
class Setting:
    """The flags that decide memory: one candidate of the suggestions, or what the user asked for."""

    offload: str | None = None
    quantize: str | None = None
    vae_tiling: bool = False
    device_map: str | None = None

    def flags(self, than: Setting | None = None) -> str:
        """``--quantize nf4 --offload model``: the flags that turn ``than`` into this setting, as typed.

        A flag that replaces one the user gave says so ("instead of --offload model"), so that adding
        it to the cell cannot be read as keeping both.
        """
        than = than or Setting()
        parts = []
        for flag, mine, theirs in (
            ("--quantize", self.quantize, than.quantize),
            ("--offload", self.offload, than.offload),
        ):
            if mine and mine != theirs:
                parts.append(f"{flag} {mine}" + (f" (instead of {flag} {theirs})" if theirs else ""))
        parts += ["--vae-tiling"] if self.vae_tiling and not than.vae_tiling else []
        parts += ["without --device-map"] if than.device_map and not self.device_map else []
        return " ".join(parts)


@dataclass(frozen=True)
class Machine:
    """What the run may use: bytes per GPU (by CUDA index, workers take them in order) and host RAM."""

    gpus: tuple[int, ...]
    host: int | None = None  # None: not checked
    free: bool = True  # False: ``gpus`` are total sizes (our own warm workers hold part of them)
    max_memory: Mapping[int | str, int] | None = None  # --max-memory, with --device-map
    labels: tuple[int, ...] = ()  # the GPUs' numbers as the user knows them (nvidia-smi's, after CUDA_VISIBLE_DEVICES)

    def label(self, position: int) -> int:
        return self.labels[position] if position < len(self.labels) else position


@dataclass(frozen=True)
class Shortfall:
    """Why a setting does not fit: what it needs, what there is, where."""

    need: int
    have: int
    where: str  # "gpu" or "host" or "gpus" (device map: all of them together)
    gpu: int = 0


def _gib(nbytes: float) -> str:
    """GiB with one decimal, as nvidia-smi's MiB divided by 1024: "needs 23.4, has 23.0" must not read 23 and 23."""
    return f"{nbytes / GiB:.1f}"


def working(pixels: int, batch: int, vae_tiling: bool) -> tuple[int, int]:
    """(denoiser activations, VAE decode) bytes for ``batch`` images of ``pixels`` each."""
    scale = pixels / _ONE_MEGAPIXEL * batch
    decode_pixels = min(pixels, TILE_PIXELS) if vae_tiling else pixels
    return int(DENOISE_WORKING * scale), int(DECODE_WORKING * decode_pixels / _ONE_MEGAPIXEL * batch)


def gpu_need(model: ModelSize, setting: Setting, pixels: int, batch: int) -> int:
    """One worker's peak GPU bytes with ``setting``.

    Without offload every weight stays on the GPU, plus the larger of the two working memories (they
    never overlap). ``--offload model`` holds one component at a time, with its own working memory.
    ``--offload sequential`` holds about one layer.
    """
    sizes = model.sizes(setting.quantize)
    denoise, decode = working(pixels, batch, setting.vae_tiling)
    if not sizes:
        return CUDA_CONTEXT + max(denoise, decode)
    if setting.offload == "sequential":
        return CUDA_CONTEXT + min(LARGEST_LAYER, max(sizes.values())) + max(denoise, decode)
    if setting.offload == "model":
        extra = {"denoiser": denoise, "vae": decode, "other": 0}
        return CUDA_CONTEXT + max(sizes[c.name] + extra[c.role] for c in model.components)
    return CUDA_CONTEXT + sum(sizes.values()) + max(denoise, decode)


def host_need(model: ModelSize, setting: Setting, workers: int) -> int:
    """Host bytes the run adds: the kernel's CPU copy (unless quantized or device-mapped: the workers load
    those straight to their GPUs, or already there), and with ``--offload model`` one more copy per worker
    (each component moved back from the GPU lands in that worker's own memory, no longer shared by fork).
    ``--offload sequential`` keeps reading the kernel's copy, shared."""
    kernel_loads = not (model.in_kernel or setting.quantize or setting.device_map)
    need = model.total if kernel_loads else 0
    if setting.offload == "model":
        need += workers * sum(model.sizes(setting.quantize).values())
    return need


def _device_map_shortfall(model: ModelSize, setting: Setting, machine: Machine, pixels: int, batch: int) -> Any:
    """``--device-map balanced``: the sum must fit the GPUs it may use, and each whole component one GPU."""
    limits = machine.max_memory or {}
    if "cpu" in limits:
        return None  # accelerate may spill to the host: nothing sure to refuse
    caps = [min(free, limits.get(i, free)) if not limits or i in limits else 0 for i, free in enumerate(machine.gpus)]
    sizes = model.sizes(setting.quantize)
    denoise, decode = working(pixels, batch, setting.vae_tiling)
    used = [c for c in caps if c > 0]
    total = sum(sizes.values()) + max(denoise, decode) + CUDA_CONTEXT * len(used)
    if total > sum(used):
        return Shortfall(total, sum(used), "gpus")
    extra = {"denoiser": denoise, "vae": decode, "other": 0}
    largest = max((sizes[c.name] + extra[c.role] for c in model.components), default=0) + CUDA_CONTEXT
    if largest > max(used, default=0):
        return Shortfall(largest, max(used, default=0), "gpu", caps.index(max(caps)))
    return None


def shortfall(
    model: ModelSize, setting: Setting, machine: Machine, *, workers: int, pixels: int, batch: int
) -> Shortfall | None:
    """Why ``setting`` does not fit ``machine``, or None when it does (GPUs first, then the host)."""
    if setting.device_map is not None:
        found = _device_map_shortfall(model, setting, machine, pixels, batch)
        if found is not None:
            return found
    else:
        need = gpu_need(model, setting, pixels, batch)
        for index, have in enumerate(machine.gpus[: max(1, workers)]):
            if need > have:
                return Shortfall(need, have, "gpu", index)
    workers = 1 if setting.device_map else workers
    need = host_need(model, setting, workers)
    if machine.host is not None and need > machine.host:
        return Shortfall(need, machine.host, "host")
    return None


def _candidates(user: Setting) -> list[list[Setting]]:
    """Groups of settings to suggest, fastest first; at most one is named from each group.

    Each adds to what the user asked for (an offload keeps their --quantize, a quantization their
    --offload), except that --offload and --device-map exclude each other.
    """
    return [
        [replace(user, vae_tiling=True)],
        [replace(user, offload=o, device_map=None) for o in ("model", "sequential")],
        [replace(user, quantize="nf4")],
    ]


def suggestions(
    model: ModelSize, user: Setting, machine: Machine, *, workers: int, pixels: int, batch: int
) -> list[str]:
    """Up to two flag sets (each of another kind) that make the run fit, as the user would type them."""

    def fits(setting: Setting) -> bool:
        return shortfall(model, setting, machine, workers=workers, pixels=pixels, batch=batch) is None

    picks: list[Setting] = []
    for group in _candidates(user):
        hit = next((s for s in group if s != user and fits(s)), None)
        if hit is not None and len(picks) < 2:
            picks.append(hit)
    if not picks:
        both = [
            replace(user, quantize="nf4", offload=o, device_map=None, vae_tiling=tiling)
            for tiling in sorted({user.vae_tiling, True})
            for o in ("model", "sequential")
        ]
        picks = [s for s in both if s != user and fits(s)][:1]
    return [s.flags(user) for s in picks]


def _describe(model: ModelSize, user: Setting, machine: Machine, lack: Shortfall, workers: int) -> str:
    """The first half of the refusal: what is needed, what there is."""
    have = "free" if machine.free else "in all"
    if lack.where == "host":
        why = "the kernel's copy" if host_need(model, replace(user, offload=None), workers) else ""
        if user.offload == "model":
            why = (why + " and " if why else "") + f"one per worker with --offload model ({workers})"
        return f"{model.name} needs ~{_gib(lack.need)} GiB of host memory ({why}), {_gib(lack.have)} GiB is available"
    if lack.where == "gpus":
        return (
            f"{model.name} needs ~{_gib(lack.need)} GiB over the GPUs with --device-map balanced, "
            f"they have {_gib(lack.have)} GiB {have}"
        )
    what = "'s largest component needs" if user.device_map else " needs"
    where = " on one GPU with --device-map balanced" if user.device_map else " per worker"
    gpu = machine.label(lack.gpu)
    return f"{model.name}{what} ~{_gib(lack.need)} GiB{where}, GPU {gpu} has {_gib(lack.have)} GiB {have}"


def refusal(model: ModelSize, user: Setting, machine: Machine, *, workers: int, pixels: int, batch: int) -> str | None:
    """The one-line refusal for a run that cannot fit, naming what would fit; None when it fits."""
    lack = shortfall(model, user, machine, workers=workers, pixels=pixels, batch=batch)
    if lack is None:
        return None
    head = _describe(model, user, machine, lack, workers)
    fixes = suggestions(model, user, machine, workers=workers, pixels=pixels, batch=batch)
    if fixes:
        return f"{head}: add {' or '.join(fixes)}"
    if lack.where == "host":
        return f"{head}: free host memory (other kernels, cached models) or use --quantize nf4 on a larger GPU"
    smallest = gpu_need(model, Setting("sequential", "nf4", True), pixels, batch)
    least = "--quantize nf4 --offload sequential --vae-tiling"
    return f"{head}, and even {least} needs ~{_gib(smallest)} GiB: use a larger GPU, or smaller images or batches"


# -- what the weights weigh ---------------------------------------------------------------------------


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
    return ModelSize(name, tuple(parts), dtype, _default_side(folder), "files")


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
    return ModelSize(name, tuple(parts), dtype, side, "loaded pipeline", in_kernel=True)


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
    return ModelSize(name, components, dtype, side, "built-in table")


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
    from .. import pipelines

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
    from ..pipelines import looks_like_path

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


# -- the plan's check ---------------------------------------------------------------------------------


def check_memory_options(model_or_pipe: Any, options: GenerateOptions, device_type: str) -> None:
    """``--offload`` / ``--quantize`` against this machine: a GPU, the backend installed, a model to load.

    The backend is looked for on ``sys.path`` only (``PathFinder``), never imported: bitsandbytes starts
    CUDA when imported, and an import hook that hides it from the kernel must not hide it from this test.
    """
    for flag, value in (("--offload", options.offload), ("--quantize", options.quantize)):
        if value is not None and device_type != "cuda":
            raise NbdistUsageError(f"{flag} needs a GPU, and this run is on the CPU (no GPU visible): drop {flag}")
    if options.quantize is None:
        return
    from ..pipelines import looks_like_path

    model = os.fspath(model_or_pipe) if isinstance(model_or_pipe, str | os.PathLike) else None
    if model is not None and looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise NbdistUsageError(f"model folder {model!r} does not exist")
    module, package = QUANTIZE_BACKENDS[options.quantize]
    if PathFinder.find_spec(module) is None:
        raise NbdistUsageError(
            f"--quantize {options.quantize} needs {module}, which is not installed: pip install {package}"
        )
    if not isinstance(model_or_pipe, str | os.PathLike):
        raise NbdistUsageError(
            "--quantize loads the model quantized in the workers: give --model ID_OR_PATH, not a loaded pipeline"
        )


def _has_children() -> bool:
    """Whether this process has live children (warm workers): the GPU memory they hold is ours to reuse."""
    import psutil

    try:
        return any(p.status() != psutil.STATUS_ZOMBIE for p in psutil.Process().children())
    except psutil.Error:
        return False


def _host_available() -> int:
    """Host RAM free for this run now (psutil's "available": free plus what the page cache can give back)."""
    import psutil

    return int(psutil.virtual_memory().available)


def this_machine(options: GenerateOptions, query: GpuQuery | None = None) -> Machine | None:
    """The GPUs' memory (free, or total while our own warm workers hold some) and the host's available RAM.

    ``query``: the GPUs the workers use, in worker order (the plan's choice); None: ask nvidia-smi.
    """
    gpus = query.gpus if query is not None else query_gpus().compute_gpus
    if not gpus:
        return None
    own = _has_children()
    sizes = tuple(g.memory_total if own else g.memory_free for g in gpus)
    memory = normalise_max_memory(options.max_memory) if options.device_map else None
    labels = tuple(g.index for g in gpus)
    return Machine(sizes, _host_available(), not own, memory, labels)


def _pixels(options: GenerateOptions, side: int) -> int:
    """The largest image of the run: --height/--width (else the model's side), or a swept size."""
    sizes = [(options.width or side, options.height or side)]
    sizes += [tuple(v) for v in options.sweep.get("size", []) if isinstance(v, list | tuple) and len(v) == 2]
    return max(int(w) * int(h) for w, h in sizes)


def check_fit(
    model_or_pipe: Any,
    options: GenerateOptions,
    device_type: str,
    dtype: str,
    workers: int,
    gpus: GpuQuery | None = None,
) -> None:
    """The plan's one call: refuse, before anything is loaded or forked, a run that cannot fit.

    Nothing is refused without an estimate (an unknown hub id, no nvidia-smi), nor on the CPU, where
    the workers share the kernel's copy and only the options need checking.
    """
    check_memory_options(model_or_pipe, options, device_type)
    if device_type != "cuda":
        return
    model = estimate(model_or_pipe, dtype, options)
    machine = this_machine(options, gpus) if model is not None and model.components else None
    if model is None or machine is None:
        return
    user = Setting(options.offload, options.quantize, options.vae_tiling, options.device_map)
    pixels = _pixels(options, model.side)
    message = refusal(model, user, machine, workers=workers, pixels=pixels, batch=options.batch_size)
    if message is not None:
        raise NbdistUsageError(message)


# -- the README's table -------------------------------------------------------------------------------

TABLE_MODELS = (
    ("SD1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("SDXL", "stabilityai/stable-diffusion-xl-base-1.0"),
    ("SD3.5-medium", "stabilityai/stable-diffusion-3.5-medium"),
    ("SD3.5-large", "stabilityai/stable-diffusion-3.5-large"),
    ("FLUX.1 (schnell, dev)", "black-forest-labs/FLUX.1-schnell"),
)
TABLE_GPUS = (16, 24, 40, 80)


def fit_table() -> str:
    """The README's "GPUs and big models" table, from the same arithmetic as the refusals.

    Each cell: one worker per GPU, the whole GPU free (``N`` GiB as nvidia-smi counts), 16-bit weights,
    the model's own image size, batch 1, enough host RAM.
    """
    head = "| model (16-bit weights) | " + " | ".join(f"{g} GB GPU" for g in TABLE_GPUS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_GPUS) + 1)]
    for label, model_id in TABLE_MODELS:
        model = known_model(model_id, "bfloat16")
        assert model is not None
        cells = []
        for size in TABLE_GPUS:
            machine = Machine((size * GiB,), None, free=True)
            run = {"workers": 1, "pixels": model.side**2, "batch": 1}
            if shortfall(model, Setting(), machine, **run) is None:
                cells.append("as is")
                continue
            fixes = suggestions(model, Setting(), machine, **run)
            cells.append(" or ".join(f"`{f}`" for f in fixes) if fixes else "does not fit")
        total = f"~{model.total / GB:.0f} GB" if model.total >= 9.5 * GB else f"~{model.total / GB:.1f} GB"
        lines.append(f"| {label}, {total} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
