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

The same arithmetic picks the flags to suggest and renders the memory table of docs/gpus.md
(``fit_table``), so the advice, the refusals and the documentation cannot disagree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.machinery import PathFinder
from typing import Any

from ...options import GenerateOptions, NbdistUsageError
from ...placement import QUANTIZE_BACKENDS, normalise_max_memory
from .gpus import GpuQuery, query_gpus
from .model_size import GB, ModelSize, estimate, known_model

__all__ = [
    "Machine",
    "ModelSize",
    "Setting",
    "check_fit",
    "check_memory_options",
    "fit_table",
    "gpu_need",
    "host_need",
    "refusal",
]

GiB = 2**30
CUDA_CONTEXT = 300 * 10**6  # a process's CUDA context and allocator before any weight (lazy module loading)
DENOISE_WORKING = 1 * GB  # the denoiser's activations for one 1024x1024 image (attention, skip tensors)
DECODE_WORKING = 3 * GB // 2  # the VAE decode of one 1024x1024 image: its activations are the largest
LARGEST_LAYER = 1 * GB  # what sequential offload holds on the GPU at once (one block, roughly)
TILE_PIXELS = 512 * 512  # --vae-tiling decodes tiles of about this size, so its decode memory stops growing
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
CPU_QUANTIZED = ("torchao-int8wo",)  # quantized by each worker on the CPU as it loads, then moved to its GPU
_ONE_MEGAPIXEL = 1024 * 1024


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


def model_working(model: ModelSize, setting: Setting, pixels: int, batch: int) -> tuple[int, int]:
    """``working`` for this model: an SDXL-family VAE run in float16 decodes in float32 (diffusers upcasts
    it for the decode: ``force_upcast``), so its decode holds twice the activations and a float32 copy
    of the VAE's weights, one more time their float16 size."""
    denoise, decode = working(pixels, batch, setting.vae_tiling)
    if model.vae_upcast and model.dtype == "float16":
        decode = 2 * decode + model.sizes(setting.quantize).get("vae", 0)
    return denoise, decode


def gpu_need(model: ModelSize, setting: Setting, pixels: int, batch: int) -> int:
    """One worker's peak GPU bytes with ``setting``.

    Without offload every weight stays on the GPU, plus the larger of the two working memories (they
    never overlap). ``--offload model`` holds one component at a time, with its own working memory.
    ``--offload sequential`` holds about one layer.
    """
    sizes = model.sizes(setting.quantize)
    denoise, decode = model_working(model, setting, pixels, batch)
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
    those themselves, or already there), and one more copy per worker with ``--offload model`` (each
    component moved back from the GPU lands in that worker's own memory, no longer shared by fork) or
    with a quantization done on the CPU (``CPU_QUANTIZED``: each worker loads and quantizes its copy in
    host memory, all at once, before moving it to its GPU; the loader's buffers come on top).
    ``--offload sequential`` keeps reading the kernel's copy, shared; bitsandbytes quantizes on the GPU."""
    need = model.total if _kernel_loads(model, setting) else 0
    if setting.offload == "model" or _quantized_on_cpu(setting):
        need += workers * sum(model.sizes(setting.quantize).values())
    return need


def _kernel_loads(model: ModelSize, setting: Setting) -> bool:
    """Whether the kernel loads a CPU copy that the workers inherit (not one it holds already)."""
    return not (model.in_kernel or setting.quantize or setting.device_map)


def _quantized_on_cpu(setting: Setting) -> bool:
    """Whether each worker quantizes its own copy in host memory (not with --device-map: loaded onto the GPUs)."""
    return setting.quantize in CPU_QUANTIZED and setting.device_map is None


def _device_map_shortfall(model: ModelSize, setting: Setting, machine: Machine, pixels: int, batch: int) -> Any:
    """``--device-map balanced``: the sum must fit the GPUs it may use, and each whole component one GPU."""
    limits = machine.max_memory or {}
    if "cpu" in limits:
        return None  # accelerate may spill to the host: nothing sure to refuse
    caps = [min(free, limits.get(i, free)) if not limits or i in limits else 0 for i, free in enumerate(machine.gpus)]
    sizes = model.sizes(setting.quantize)
    denoise, decode = model_working(model, setting, pixels, batch)
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
        parts = ["the kernel's copy"] if _kernel_loads(model, user) else []
        if user.offload == "model":
            parts.append(f"one per worker with --offload model ({workers})")
        elif _quantized_on_cpu(user):
            parts.append(f"one per worker, each quantized on the CPU for --quantize {user.quantize} ({workers})")
        why = " and ".join(parts)
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
    from ...pipelines import check_model_folder

    if isinstance(model_or_pipe, str | os.PathLike):
        check_model_folder(os.fspath(model_or_pipe))
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


# -- the table in docs/gpus.md ------------------------------------------------------------------------

TABLE_MODELS = (
    ("SD1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("SDXL", "stabilityai/stable-diffusion-xl-base-1.0"),
    ("SD3.5-medium", "stabilityai/stable-diffusion-3.5-medium"),
    ("SD3.5-large", "stabilityai/stable-diffusion-3.5-large"),
    ("FLUX.1 (schnell, dev)", "black-forest-labs/FLUX.1-schnell"),
)
TABLE_GPUS = (16, 24, 40, 80)


def fit_table() -> str:
    """The memory table of docs/gpus.md ("Big models: offload and quantize"), from the same arithmetic as the refusals.

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
