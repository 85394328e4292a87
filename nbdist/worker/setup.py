"""Get a worker ready: its process group in accelerate, its pipeline on its device.

Shared by the warm pool's workers (``serve``) and by processes that make one run and exit
(``run_worker`` under ``torchrun`` / ``accelerate launch``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..device_libraries import restore_in_worker
from ..messages import WorkerStarted
from ..spec import WorkerSetup
from .adapters import Adapters
from .caching import StepCache
from .compiling import Compiler
from .lifecycle import set_process_title
from .previews import Previews
from .quiet import redirect_output, silence_libraries

__all__ = ["ReadyWorker", "begin", "get_ready", "nccl_environment", "visible_devices"]


@dataclass
class ReadyWorker:
    """A worker with its pipeline placed: what it needs to make images."""

    state: Any  # accelerate PartialState
    pipe: Any
    rank: int
    device: str
    schedulers: dict[str | None, Any] = field(default_factory=dict)  # None: the pipeline's own
    adapters: Adapters = field(default_factory=Adapters)  # the LoRAs loaded in ``pipe`` and the active set
    previews: Previews = field(default_factory=Previews)  # --preview decoders, made on first use
    compiler: Compiler = field(default_factory=Compiler)  # --compile: done once, kept across runs (compiling.py)
    cache: StepCache = field(default_factory=StepCache)  # --cache: diffusers' step cache and its tally (caching.py)

    def use_loras(self, wanted: dict[str, float], fuse: bool = False) -> None:
        """This batch's LoRAs and scales (none: LoRAs off), swapped in the warm pipeline (``adapters.py``)."""
        self.adapters.use(self.pipe, wanted, fuse)

    def use_scheduler(self, name: str | None) -> None:
        """``--scheduler NAME`` for this run (``NAME.from_config`` of the pipeline's own, made once), or the own one."""
        if not self.schedulers:
            self.schedulers[None] = self.pipe.scheduler
        if name not in self.schedulers:
            import diffusers

            self.schedulers[name] = getattr(diffusers, str(name)).from_config(self.schedulers[None].config)
        self.pipe.scheduler = self.schedulers[name]


def begin(setup: WorkerSetup) -> int:
    """First thing in a worker: output to its log file, libraries quiet, thread count set; returns the rank."""
    if setup.cuda_visible is not None:  # the GPUs the plan chose; CUDA reads this at its first use, not before
        os.environ.update(visible_devices(setup.cuda_visible, int(os.environ.get("LOCAL_RANK", "0"))))
    import torch

    restore_in_worker()  # bitsandbytes & co., kept out of the kernel, are this worker's to import
    rank = int(os.environ.get("RANK", "0"))
    set_process_title(rank, _device_label(setup))  # `ps` tells the workers from the kernel they forked from
    redirect_output(os.path.join(setup.log_dir, f"worker-{rank}.log"))
    silence_libraries()
    torch.set_num_threads(setup.threads_per_worker)
    return rank


def visible_devices(cuda_visible: str, local_rank: int) -> dict[str, str]:
    """This worker's ``CUDA_VISIBLE_DEVICES`` (and ``LOCAL_RANK``) for the GPUs the plan chose.

    GPUs: all of them, rank r uses the r-th. MIG instances: CUDA shows a process one instance only, so
    each worker is given its own and uses it as device 0 (accelerate picks ``cuda:LOCAL_RANK``).
    """
    entries = cuda_visible.split(",")
    if not entries[0].startswith("MIG-"):
        return {"CUDA_VISIBLE_DEVICES": cuda_visible}
    return {"CUDA_VISIBLE_DEVICES": entries[local_rank], "LOCAL_RANK": "0"}


def _device_label(setup: WorkerSetup) -> str:
    """``cpu``, ``cuda:1`` (this worker's GPU among the visible ones) or ``cuda`` (--device-map: all of them)."""
    if setup.device_type == "cpu":
        return "cpu"
    return "cuda" if setup.options.device_map else f"cuda:{os.environ.get('LOCAL_RANK', '0')}"


def _partial_state(device_type: str) -> Any:
    """A fresh ``PartialState`` for this process.

    ``PartialState`` is a process-wide singleton; one created in the parent before the fork would be
    inherited and make every worker believe it is the only process, so it is reset first. On the CPU
    ``cpu=True`` is essential: without it accelerate does not set up the gloo group and every worker
    silently takes all the prompts.
    """
    from accelerate import PartialState

    PartialState._reset_state()
    return PartialState(cpu=device_type == "cpu")


def get_ready(setup: WorkerSetup) -> tuple[ReadyWorker, WorkerStarted]:
    """Join the process group, load or inherit the pipeline, place it; returns the worker and its hello."""
    import torch

    bad_fork = _in_bad_fork()
    if bad_fork and setup.device_type == "cuda":
        raise RuntimeError(
            "this worker was forked after the kernel initialised or probed CUDA, so it cannot use the GPU: restart "
            "the kernel and run %load_ext nbdist (or import nbdist) first"
        )
    nccl_environment(setup.device_type)
    state = _partial_state(setup.device_type)
    torch.set_num_threads(setup.threads_per_worker)  # accelerate's multi-CPU setup resets it to cores // n
    device = "cpu" if state.device.type == "cpu" else str(state.device)  # accelerate may say "cpu:0"
    pipe = _load(setup)
    device = _place(pipe, setup, device)
    pipe.set_progress_bar_config(disable=True)
    hello = WorkerStarted(
        state.process_index,
        device,
        os.getpid(),
        -1,
        torch.get_num_threads(),
        device_map=_device_map(pipe, setup),
        bad_fork=bad_fork,
    )
    return ReadyWorker(state, pipe, state.process_index, device), hello


def nccl_environment(device_type: str) -> dict[str, str]:
    """Turn NCCL's peer-to-peer and InfiniBand paths off where accelerate says they fail; returns what was set.

    RTX 40-series GPUs under drivers older than 550.40.07 hang in them. ``notebook_launcher`` sets these
    for the processes it forks; set here they hold on every path (``-n 1``, ``--device-map``, Ray actors,
    torchrun). accelerate asks ``nvidia-smi``, never CUDA; a user's own setting is kept.
    """
    if device_type != "cuda":
        return {}
    from accelerate.utils import check_cuda_p2p_ib_support

    if check_cuda_p2p_ib_support():
        return {}
    wanted = {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}
    return {name: os.environ.setdefault(name, value) for name, value in wanted.items()}


def _in_bad_fork() -> bool:
    """torch's bad-fork flag, read before anything here touches CUDA (False on a CPU-only build of torch)."""
    import torch

    return bool(torch.backends.cuda.is_built() and torch.cuda._is_in_bad_fork())


def _load(setup: WorkerSetup) -> Any:
    """The pipeline: inherited through fork, or loaded here (by torchrun/accelerate, ``--device-map``,
    ``--quantize``: quantized weights are made on this worker's GPU, never in the kernel)."""
    if setup.pipeline is not None:
        return setup.pipeline
    from ..pipelines import load_pipeline
    from ..placement import normalise_max_memory

    quantization = None
    if setup.options.quantize is not None:
        from .quantize import quantization_config

        quantization = quantization_config(
            setup.options.quantize, setup.model or "", setup.dtype, setup.options.revision
        )
    return load_pipeline(
        setup.model or "",
        setup.dtype,
        allow_pickle=setup.options.allow_pickle,
        device_map=setup.options.device_map,
        max_memory=normalise_max_memory(setup.options.max_memory),
        variant=setup.options.variant,
        revision=setup.options.revision,
        quantization_config=quantization,
    )


def _place(pipe: Any, setup: WorkerSetup, device: str) -> str:
    """Put the pipeline where this worker runs it; returns the device to report.

    A pipeline this worker loaded with ``--device-map balanced`` is already spread over the GPUs and
    stays so. A device-mapped pipeline handed over from the parent (e.g. loaded there with
    ``device_map="cpu"``) carries accelerate hooks that would fight ``.to()``; diffusers requires
    ``reset_device_map()`` first, which removes them (in this worker's copy only). ``--offload`` hands
    placement to diffusers' hooks instead of ``.to()``: each component (or layer) goes to this worker's
    GPU only while it runs, which is what lets a model bigger than the GPU run at all.
    """
    options = setup.options
    if options.vae_tiling:
        vae = getattr(pipe, "vae", None)
        if not hasattr(vae, "enable_tiling"):
            raise ValueError(f"--vae-tiling: {type(pipe).__name__} has no VAE that decodes in tiles")
        vae.enable_tiling()
    if options.device_map is not None:
        placed = sorted({str(d) for d in _as_dict(pipe.hf_device_map).values()})
        return f"{setup.options.device_map}:{'+'.join(placed)}"
    if getattr(pipe, "hf_device_map", None):
        pipe.reset_device_map()
    if options.offload is not None:
        import torch

        enable = pipe.enable_model_cpu_offload if options.offload == "model" else pipe.enable_sequential_cpu_offload
        enable(gpu_id=torch.device(device).index or 0)
        return device
    pipe.to(device)
    return device


def _device_map(pipe: Any, setup: WorkerSetup) -> dict[str, Any] | None:
    """The ``hf_device_map`` of a ``--device-map`` run, as plain picklable values for the parent."""
    if setup.options.device_map is None or not getattr(pipe, "hf_device_map", None):
        return None
    return {str(k): v if isinstance(v, int | str) else str(v) for k, v in _as_dict(pipe.hf_device_map).items()}


def _as_dict(device_map: Any) -> dict[str, Any]:
    """diffusers keeps a dict per component for "balanced", but just the string for ``device_map="cpu"``."""
    return dict(device_map) if isinstance(device_map, dict) else {"pipeline": device_map} if device_map else {}
