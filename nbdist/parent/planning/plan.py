"""Plan a run before any process starts: check every input, pick the device, dtype and worker count.

Everything a user can get wrong is found here, as a one-line ``NbdistUsageError``, while nothing has
been forked yet. The plan also decides what the warm pool must be (``PoolKey``): a later run with the
same key reuses the workers; any other key replaces them.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ... import warm_imports
from ...cache_choice import check_cache
from ...call_settings import CallSettings, check_params, check_scheduler, image_size, resolve_call
from ...cluster_address import cluster_from_env
from ...jobs import ImageJob, make_jobs
from ...loras import PROMPT_SYNTAXES, check_lora_fits, check_lora_sweep, is_lora_axis, lora_sources, parse_loras
from ...options import GenerateOptions, NbdistUsageError
from ...preview_choice import check_preview
from ...prompt_syntax import weighting_note
from ..machine.devices import GpuChoice, choose_gpus, cpu_count, visible_gpu_count
from ..machine.dtypes import default_dtype, family_of
from ..machine.fork_safety import check_fork_safe
from ..machine.gpus import GpuQuery, query_gpus
from ..machine.memory_fit import check_fit
from ..results.observer import RunInfo
from ..runs.folders import new_run_folder
from .init_images import check_img2img, resolve_init
from .variations import check_variations

__all__ = ["Plan", "PoolKey", "make_options", "plan_run"]

_OPTION_NAMES = {f.name for f in fields(GenerateOptions)}


@dataclass(frozen=True)
class PoolKey:
    """What the warm workers hold; a run with another key needs new workers."""

    model: str
    pipe_id: int  # id() of a pipeline object given in Python; 0 for a model loaded by name (Plan.by_name)
    device_type: str
    dtype: str
    num_processes: int
    threads: int
    allow_pickle: bool
    device_map: str | None
    max_memory: str
    variant: str | None = None
    revision: str | None = None
    cuda_visible: str | None = None  # the workers' CUDA_VISIBLE_DEVICES when narrowed to compute GPUs
    offload: str | None = None
    quantize: str | None = None
    vae_tiling: bool = False
    cluster: str | None = None  # the Ray cluster's address (--cluster): actors there instead of forked workers

    def difference(self, other: PoolKey) -> str:
        """What changed, for the one line that says why the workers are replaced."""
        labels = {"pipe_id": "pipeline object", "num_processes": "-n", "threads": "threads per worker"}
        changed = [labels.get(f.name, f.name) for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
        for implied, by in (("pipeline object", "model"), ("threads per worker", "-n")):
            if implied in changed and by in changed:
                changed.remove(implied)
        return ", ".join(changed) or "nothing"


@dataclass
class Plan:
    """A checked run: the pipeline in this process, where and how it runs, and its numbered jobs."""

    pipe: Any
    name: str
    device_type: str
    dtype: str
    num_processes: int
    threads: int
    options: GenerateOptions
    jobs: list[ImageJob]
    info: RunInfo
    call: CallSettings
    notes: list[str]  # one line each, shown before the run (ignored settings, the dtype chosen)
    cuda_visible: str | None = None  # set in each worker right after the fork (GPUs chosen); None: inherit
    # Loaded by name through the kernel's cache: the key's model, dtype, variant and revision say which
    # pipeline the workers copied, so a reload of the same files (the cache dropped it) keeps them.
    by_name: bool = False

    @property
    def _pool_size(self) -> int:
        """``-n`` as the key sees it: on a cluster without ``-n``, 0 ("every slot"), so that after a lost node
        the next run keeps the actors that remain instead of replacing them with fewer new ones."""
        return 0 if self.options.cluster is not None and self.options.num_processes is None else self.num_processes

    @property
    def key(self) -> PoolKey:
        """The warm pool this plan needs."""
        o = self.options
        return PoolKey(
            self.name,
            0 if self.by_name else id(self.pipe),
            self.device_type,
            self.dtype,
            self._pool_size,
            self.threads,
            o.allow_pickle,
            o.device_map,
            repr(o.max_memory),
            o.variant,
            o.revision,
            cuda_visible=self.cuda_visible,
            offload=o.offload,
            quantize=o.quantize,
            vae_tiling=o.vae_tiling,
            cluster=o.cluster,
        )


def make_options(options: GenerateOptions | None, overrides: dict[str, Any]) -> GenerateOptions:
    """``GenerateOptions`` with keyword overrides; an unknown keyword is a ``TypeError`` like any call's."""
    unknown = set(overrides) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"generate() got unknown option(s): {', '.join(sorted(unknown))}")
    return (options or GenerateOptions()).with_(**overrides)


def plan_run(model_or_pipe: Any, prompts: Sequence[str], options: GenerateOptions) -> Plan:
    """Check everything checkable before a process starts and number the jobs."""
    options = options.with_(cluster=cluster_from_env(options.cluster))
    options.validate()
    if options.sweep:
        from ...sweep import parse_sweep

        options = options.with_(sweep=parse_sweep(options.sweep))  # values given in Python, checked like flags
    options = _check_loras(options)
    options = resolve_init(None, len(prompts), options)  # --init as PNG path(s); the pipeline is checked below
    if not prompts:
        raise NbdistUsageError("no prompts: write one prompt per line in the cell")
    notes: list[str] = []
    cluster = options.cluster is not None
    gpus = _local_gpus(options) if not cluster else GpuQuery()
    cuda_visible = None
    if cluster:
        pipe, name, device_type, dtype, n = _plan_cluster(model_or_pipe, options, notes)
        call = _check_call(pipe, name, options)
    elif options.device_map is not None:
        pipe, name, device_type, dtype, n = _plan_device_map(model_or_pipe, options, gpus, notes)
        check_fit(model_or_pipe, options, device_type, dtype, n, gpus)  # before anything is loaded or forked
        call = resolve_call(None, name, options)  # the kernel loads nothing: class defaults stay unknown
    else:
        device_type = _device_type(options, gpus)
        choice = _num_processes(options, device_type, gpus)
        n, cuda_visible = choice.count, choice.cuda_visible
        dtype, note = _dtype(model_or_pipe, options, device_type, choice.gpus)
        notes += [line for line in (choice.note, note) if line]
        check_fit(model_or_pipe, options, device_type, dtype, n, choice.gpus)  # before the kernel loads it
        pipe, name = _pipeline(model_or_pipe, dtype, options)
        call = _check_call(pipe, name, options)
        notes += [*call.notes, *filter(None, [weighting_note(pipe, list(prompts), options.prompt_syntax)])]
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    options = options.with_(seed=seed, schedule=options.schedule or ("dynamic" if options.sweep else "static"))
    if options.save and options.save_dir is None:  # last: no folder for a run refused above
        folder, note = new_run_folder(prompts)
        options = options.with_(save_dir=str(folder))
        notes += [note] if note else []
    jobs = make_jobs(list(prompts), options.images_per_prompt, seed, options.sweep)
    height, width = image_size(call)
    info = RunInfo(jobs, options, name, seed, n, device_type, height, width, call)
    threads = 1 if cluster else _threads_per_worker(device_type, n)  # an actor asks Ray for one CPU
    by_name = pipe is not None and isinstance(model_or_pipe, str | os.PathLike)
    return Plan(pipe, name, device_type, dtype, n, threads, options, jobs, info, call, notes, cuda_visible, by_name)


def _local_gpus(options: GenerateOptions) -> GpuQuery:
    """This machine's GPUs (one nvidia-smi call per plan); where workers will use them, fork checked safe first.

    Only a GPU run is refused for a spoiled fork: a CPU worker never touches CUDA, and the CUDA build of
    torch without a driver spoils fork at its first device count whatever anyone does.
    """
    if options.device == "cpu":
        return GpuQuery()
    gpus = query_gpus()
    if options.device == "cuda" or visible_gpu_count(gpus) > 0:
        warm_imports.wait(import_here=False)  # the probe forks and reads torch: not while the warm thread imports it
        check_fork_safe()
    return gpus


def _dtype(model_or_pipe: Any, options: GenerateOptions, device_type: str, gpus: GpuQuery) -> tuple[str, str | None]:
    """``--dtype``, else the one rule (``dtypes.default_dtype``) for this model's family on the workers' GPUs."""
    if options.dtype:
        return options.dtype, None
    return default_dtype(device_type, family_of(model_or_pipe), gpus)


def _check_call(pipe: Any, name: str, options: GenerateOptions) -> CallSettings:
    """Size, --param and --scheduler against this pipeline; the run's call settings."""
    if pipe is None:  # --quantize: the workers load it, the kernel knows no class defaults
        return resolve_call(None, name, options)
    scale = getattr(pipe, "vae_scale_factor", None)
    if isinstance(scale, int) and scale > 0:
        options.check_size(scale)
    check_params(pipe, options.params)
    check_scheduler(pipe, options.scheduler)
    check_sweep(pipe, options.sweep)
    check_variations(pipe, options)
    check_preview(pipe, options.preview)
    check_cache(pipe, [options.cache, *options.sweep.get("cache", [])])
    if options.init is not None:
        check_img2img(pipe)
    for lora in lora_sources(check_lora_sweep(options.loras, options.sweep), options.allow_pickle):
        check_lora_fits(pipe, name, lora)
    return resolve_call(pipe, name, options)


def _check_loras(options: GenerateOptions) -> GenerateOptions:
    """``loras=`` as given in Python made ``{source: scale}``; every LoRA a run may use exists, before any load."""
    if options.prompt_syntax not in PROMPT_SYNTAXES:
        raise NbdistUsageError(
            f"unknown --prompt-syntax {options.prompt_syntax!r}; choose {', '.join(PROMPT_SYNTAXES)}"
        )
    options = options.with_(loras=parse_loras(options.loras))
    if (options.loras or any(is_lora_axis(n) for n in options.sweep)) and importlib.util.find_spec("peft") is None:
        raise NbdistUsageError("--lora needs peft (diffusers loads LoRAs with it): pip install 'nbdist[lora]'")
    lora_sources(check_lora_sweep(options.loras, options.sweep), options.allow_pickle)
    if options.fuse_lora and any(is_lora_axis(name) for name in options.sweep):
        raise NbdistUsageError("--fuse-lora with a LoRA sweep would fuse and unfuse for every image; leave it out")
    if options.fuse_lora and options.quantize == "nf4":
        raise NbdistUsageError(
            "--fuse-lora with --quantize nf4: merging a LoRA into 4-bit weights and out again drifts (peft warns "
            "of rounding errors), so later images would change; leave out --fuse-lora (the LoRA runs unfused)"
        )
    return options


def check_sweep(pipe: Any, axes: dict[str, list[Any]]) -> None:
    """Every sweep value must work with this pipeline: sizes, schedulers, call argument names."""
    from ...sweep import BUILTIN_AXES

    scale = getattr(pipe, "vae_scale_factor", None)
    for name, values in axes.items():
        if name == "size" and isinstance(scale, int) and scale > 0:
            for width, height in values:
                if width % scale or height % scale:
                    raise NbdistUsageError(
                        f"--sweep size {width}x{height}: not a multiple of {scale} (VAE scale factor)"
                    )
        elif name == "scheduler":
            for value in values:
                check_scheduler(pipe, value)
        elif name == "negative" and "negative_prompt" not in inspect.signature(type(pipe).__call__).parameters:
            raise NbdistUsageError(f"--sweep negative: {type(pipe).__name__} takes no negative prompt")
        elif name not in BUILTIN_AXES and not is_lora_axis(name):
            check_params(pipe, {name: values[0]})


def dispatch_order(plan: Plan) -> list[ImageJob]:
    """The order workers take the jobs in: for a dynamic schedule the costliest first, so all end together.

    Cost is steps × pixels (what a denoising loop scales with); the longest-first order keeps the last
    images small, so no worker is left with a long one while the others are idle.
    """
    if plan.options.schedule != "dynamic" or not plan.options.sweep:
        return plan.jobs
    effective = plan.call.effective

    def cost(job: ImageJob) -> float:
        values = job.settings
        width, height = values.get("size", (effective.get("width") or 1, effective.get("height") or 1))
        return float(values.get("steps", effective.get("steps") or 1)) * width * height

    return sorted(plan.jobs, key=lambda job: (-cost(job), job.index))


def _device_type(options: GenerateOptions, query: GpuQuery) -> str:
    gpus = visible_gpu_count(query)
    if options.device == "cuda" and gpus == 0:
        raise NbdistUsageError("--device cuda: no GPU is visible to this process")
    if options.device == "auto":
        return "cuda" if gpus else "cpu"
    return options.device


def _num_processes(options: GenerateOptions, device_type: str, query: GpuQuery) -> GpuChoice:
    """``-n``, else one worker per compute GPU (display GPUs left out), else a CPU default that keeps the cores busy.

    Never from the number of prompts: the warm workers stay across cells, and a default that followed
    the cell would replace them between a one-prompt cell and a twelve-prompt one.
    """
    if device_type == "cuda":
        return choose_gpus(options.num_processes, query)
    if options.num_processes is not None:
        return GpuChoice(options.num_processes, GpuQuery())
    return GpuChoice(max(1, min(cpu_count(), 4)), GpuQuery())


def _threads_per_worker(device_type: str, n: int) -> int:
    """Torch intra-op threads per worker: on the CPU ``cores // n``, so the workers never oversubscribe.

    Measured on 2 cores (benchmarks/RESULTS.md): 2 workers x 1 thread beat 1 worker x 2 threads, and
    2 x 2 threads (torch's default in every process) is slower than both. ``NBDIST_THREADS_PER_WORKER``
    overrides it (e.g. when other work shares the machine, or to measure the lever).
    """
    override = os.environ.get("NBDIST_THREADS_PER_WORKER")
    if override:
        if not override.isdigit() or int(override) < 1:
            raise NbdistUsageError(f"NBDIST_THREADS_PER_WORKER must be a positive integer, got {override!r}")
        return int(override)
    return max(1, cpu_count() // n) if device_type == "cpu" else 1


def _pipeline(model_or_pipe: Any, dtype: str, options: GenerateOptions) -> tuple[Any, str]:
    """The pipeline object and a name for it (the model id or folder, or the pipeline's class)."""
    if isinstance(model_or_pipe, str | os.PathLike):
        from ...pipelines import cached_pipeline

        model = os.fspath(model_or_pipe)
        if options.quantize is not None:  # quantized in the workers, on their GPUs: never loaded here
            return None, model
        pipe = cached_pipeline(
            model, dtype, allow_pickle=options.allow_pickle, variant=options.variant, revision=options.revision
        )
        return pipe, model
    if not callable(model_or_pipe) or not hasattr(model_or_pipe, "components"):
        raise NbdistUsageError(f"{type(model_or_pipe).__name__} is not a diffusers pipeline")
    name = getattr(getattr(model_or_pipe, "config", None), "_name_or_path", None) or type(model_or_pipe).__name__
    return model_or_pipe, str(name)


def _plan_cluster(model_or_pipe: Any, options: GenerateOptions, notes: list[str]) -> tuple[Any, str, str, str, int]:
    """``--cluster``: connect (a one-line error if the cluster cannot be reached), then size the actors from it:
    ``-n``, else as many as it has free now (its own warm actors' slots count as free).

    A model id or folder is loaded by each actor on its own node, never in the kernel; a pipeline
    object given in Python is shipped to the actors once through Ray's object store.
    """
    from ..ray.cluster import connect

    facts = connect(str(options.cluster))
    if options.device == "cuda" and not facts.gpus:
        raise NbdistUsageError(f"--device cuda: the cluster at {options.cluster} has no GPU")
    device_type = "cuda" if facts.gpus and options.device != "cpu" else "cpu"
    slots, unit = (facts.gpus, "GPU") if device_type == "cuda" else (facts.cpus, "CPU")
    free = facts.free_gpus if device_type == "cuda" else facts.free_cpus
    n = options.num_processes or max(1, min(free, slots))  # what other jobs leave: a busy cluster is not waited on
    if n > slots:
        raise NbdistUsageError(f"-n {n}: the cluster at {options.cluster} has {slots} {unit}(s) in all, one actor each")
    dtype, note = _dtype(model_or_pipe, options, device_type, facts.kinds)  # the kinds its nodes name
    notes += [note] if note else []
    if not isinstance(model_or_pipe, str | os.PathLike):
        pipe, name = _pipeline(model_or_pipe, dtype, options)
        return pipe, name, device_type, dtype, n
    from ...pipelines import looks_like_path

    model = os.fspath(model_or_pipe)
    if looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise NbdistUsageError(f"model folder {model!r} does not exist (every node of the cluster must read it)")
    return None, model, device_type, dtype, n


def _plan_device_map(
    model_or_pipe: Any, options: GenerateOptions, gpus: GpuQuery, notes: list[str]
) -> tuple[Any, str, str, str, int]:
    """``--device-map balanced``: one worker loads the model across the GPUs; the kernel loads nothing.

    Loading here would put a model meant for several GPUs into the kernel's memory, and placing it
    would initialise CUDA in the kernel; so the plan only checks, and the pipeline slot stays empty.
    """
    from ...placement import check_placement

    check_placement(options, visible_gpu_count(gpus))
    if not isinstance(model_or_pipe, str | os.PathLike):
        raise NbdistUsageError(
            "--device-map balanced loads the model itself with from_pretrained: give --model ID_OR_PATH, "
            "not a pipeline that is already loaded"
        )
    from ...pipelines import check_model_folder

    model = os.fspath(model_or_pipe)
    check_model_folder(model)
    dtype, note = _dtype(model, options, "cuda", gpus)  # the model spreads over every visible GPU
    notes += [note] if note else []
    return None, model, "cuda", dtype, 1
