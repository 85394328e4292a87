"""``nbdist.generate``: the plain Python API under the magic and the CLI.

One call: validate everything, load (or reuse) the pipeline in this process on the CPU, fork the
workers, stream their messages to observers, and return a ``GenerationResult``, partial if the run
was interrupted or a worker failed.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..jobs import make_jobs
from ..options import GenerateOptions, NbdistUsageError
from ..spec import RunSpec
from .collector import Collector, ResultBuilder
from .devices import cpu_count, cuda_initialized, visible_gpu_count
from .launch import LaunchOutcome, launch_workers
from .observer import RunInfo, RunObserver
from .prompt_check import truncation_warning
from .results import GenerationResult, WorkerFailure
from .saving import DiskWriter

__all__ = ["generate", "plan_run"]

_OPTION_NAMES = {f.name for f in fields(GenerateOptions)}


def _options(options: GenerateOptions | None, overrides: dict[str, Any]) -> GenerateOptions:
    unknown = set(overrides) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"generate() got unknown option(s): {', '.join(sorted(unknown))}")
    return (options or GenerateOptions()).with_(**overrides)


def _device_type(options: GenerateOptions) -> str:
    gpus = visible_gpu_count()
    if options.device == "cuda" and gpus == 0:
        raise NbdistUsageError("--device cuda: no GPU is visible to this process")
    if options.device == "auto":
        return "cuda" if gpus else "cpu"
    return options.device


def _num_processes(options: GenerateOptions, device_type: str, num_jobs: int) -> int:
    """``-n``, else one worker per visible GPU, else a CPU default that keeps cores busy."""
    if device_type == "cuda":
        gpus = visible_gpu_count()
        if options.num_processes is not None and options.num_processes > gpus:
            raise NbdistUsageError(f"-n {options.num_processes}: only {gpus} GPU(s) visible")
        return options.num_processes or gpus
    if options.num_processes is not None:
        return options.num_processes
    return max(1, min(cpu_count(), 4, num_jobs))


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


def _pipeline(model_or_pipe: Any, dtype: str, allow_pickle: bool) -> tuple[Any, str]:
    """The pipeline object and a name for it (the model id or folder, or the pipeline's class)."""
    if isinstance(model_or_pipe, str | os.PathLike):
        from ..pipelines import cached_pipeline

        return cached_pipeline(os.fspath(model_or_pipe), dtype, allow_pickle=allow_pickle), os.fspath(model_or_pipe)
    if not callable(model_or_pipe) or not hasattr(model_or_pipe, "components"):
        raise NbdistUsageError(f"{type(model_or_pipe).__name__} is not a diffusers pipeline")
    name = getattr(getattr(model_or_pipe, "config", None), "_name_or_path", None) or type(model_or_pipe).__name__
    return model_or_pipe, str(name)


def plan_run(model_or_pipe: Any, prompts: Sequence[str], options: GenerateOptions) -> tuple[Any, str, str, str, int]:
    """Everything checkable before a process starts: returns (pipe, model name, device, dtype, n)."""
    options.validate()
    if not prompts:
        raise NbdistUsageError("no prompts: write one prompt per line in the cell")
    if options.device != "cpu" and cuda_initialized():
        raise NbdistUsageError(
            "CUDA is already initialised in this kernel, so forked workers cannot use the GPU. "
            "Restart the kernel and run %%distgen before any cell that touches the GPU "
            "(.to('cuda'), torch.cuda calls, Accelerator(), importing bitsandbytes)."
        )
    if options.device_map is not None:
        return _plan_device_map(model_or_pipe, options)
    device_type = _device_type(options)
    dtype = options.dtype or ("float16" if device_type == "cuda" else "float32")
    n = _num_processes(options, device_type, len(prompts) * options.images_per_prompt)
    pipe, name = _pipeline(model_or_pipe, dtype, options.allow_pickle)
    scale = getattr(pipe, "vae_scale_factor", None)
    if isinstance(scale, int) and scale > 0:
        options.check_size(scale)
    return pipe, name, device_type, dtype, n


def _plan_device_map(model_or_pipe: Any, options: GenerateOptions) -> tuple[Any, str, str, str, int]:
    """``--device-map balanced``: one worker loads the model across the GPUs; the kernel loads nothing.

    Loading here would put a model meant for several GPUs into the kernel's memory, and placing it
    would initialise CUDA in the kernel; so the plan only checks, and the pipeline slot stays empty.
    """
    from ..placement import check_placement

    check_placement(options, visible_gpu_count())
    if not isinstance(model_or_pipe, str | os.PathLike):
        raise NbdistUsageError(
            "--device-map balanced loads the model itself with from_pretrained: give --model ID_OR_PATH, "
            "not a pipeline that is already loaded"
        )
    from ..pipelines import looks_like_path

    model = os.fspath(model_or_pipe)
    if looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise NbdistUsageError(f"model folder {model!r} does not exist")
    return None, model, "cuda", options.dtype or "float16", 1


def _default_size(pipe: Any) -> tuple[int, int]:
    """The size the pipeline makes when none is given (SD: unet sample size × VAE scale factor)."""
    try:
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    except AttributeError:
        side = 512
    return side, side


def generate(
    model_or_pipe: Any,
    prompts: Sequence[str],
    *,
    options: GenerateOptions | None = None,
    observers: Sequence[RunObserver] = (),
    **overrides: Any,
) -> GenerationResult:
    """Generate images for ``prompts`` on every GPU (or several CPU workers) and return them.

    ``model_or_pipe`` is a hub id, a local folder saved with ``save_pretrained``, or a diffusers
    pipeline object already loaded. Options are ``GenerateOptions`` fields, e.g. ``steps=30, seed=0,
    num_processes=2, save_dir="out"``. Observers (the notebook gallery, the CLI's progress line) see
    every worker message as it arrives. Bad input raises ``NbdistUsageError`` before anything starts.
    """
    opts = _options(options, overrides)
    prompts = list(prompts)
    pipe, name, device_type, dtype, n = plan_run(model_or_pipe, prompts, opts)
    warning = truncation_warning(pipe, prompts)
    if warning:
        print(warning, file=sys.stderr)
    seed = opts.seed if opts.seed is not None else secrets.randbelow(2**31)
    opts = opts.with_(seed=seed)
    jobs = make_jobs(prompts, opts.images_per_prompt, seed)
    default_h, default_w = _default_size(pipe)
    info = RunInfo(jobs, opts, name, seed, n, device_type, opts.height or default_h, opts.width or default_w)

    ctx = multiprocessing.get_context("fork")
    log_dir = tempfile.mkdtemp(prefix="nbdist-logs-")
    spec = RunSpec(
        jobs=jobs,
        options=opts,
        device_type=device_type,
        dtype=dtype,
        threads_per_worker=_threads_per_worker(device_type, n),
        log_dir=log_dir,
        queue=ctx.Queue(),
        pipeline=pipe,
        model=name,
        next_job=ctx.Value("q", 0) if opts.schedule == "dynamic" else None,
    )
    builder = ResultBuilder()
    writer = DiskWriter(opts.save_dir) if opts.save_dir else None
    all_observers: list[RunObserver] = [builder, *observers, *([writer] if writer else [])]
    for obs in all_observers:
        obs.on_start(info)

    from ..worker import run_worker

    collector = Collector(spec.queue, all_observers, n)
    started = time.monotonic()
    collector.start()
    outcome = LaunchOutcome()
    # Objects alive now (the pipeline's modules, every imported library) go to the GC's permanent
    # generation until the workers are gone: a full collection in a worker (the GC's thresholds, or a
    # library's gc.collect()) would otherwise write to all their headers and copy-on-write ~95 MB of the
    # kernel's heap into each worker (measured with the "cpu" tiny pipeline; benchmarks/RESULTS.md).
    gc.freeze()
    try:
        outcome = launch_workers(run_worker, (spec,), n)
    except KeyboardInterrupt:  # before the launcher started waiting: nothing was forked
        outcome.interrupted = True
    finally:
        gc.unfreeze()
        _finish_collecting(collector)
        spec.queue.close()
    interrupted = outcome.interrupted
    elapsed = time.monotonic() - started
    if outcome.error is not None and not builder.records:
        shutil.rmtree(log_dir, ignore_errors=True)
        raise outcome.error
    _add_launch_failures(builder, outcome)

    result = GenerationResult(
        records=[builder.records[i] for i in sorted(builder.records)],
        missing=[job for job in jobs if job.index not in builder.records],
        options=opts,
        seed=seed,
        model=name,
        num_processes=n,
        seconds=elapsed,
        first_image_seconds=None if builder.first_image_at is None else builder.first_image_at - started,
        interrupted=interrupted,
        worker_failures=builder.worker_failures,
        workers=builder.workers,
        logs=_read_logs(log_dir),
        save_dir=Path(opts.save_dir) if opts.save_dir else None,
    )
    if writer is not None:
        for record in result.records:
            record.path = writer.paths.get(record.index)
    try:
        for obs in all_observers:
            _end_observer(obs, result)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _finish_collecting(collector: Collector) -> None:
    """Wait for the collector to drain the queue; a second interrupt must not lose what it holds.

    Bounded: once every worker is gone at most a pipe's worth of messages is left, but a worker killed
    in the middle of writing one leaves a message that never completes.
    """
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            collector.finish(timeout=max(0.0, deadline - time.monotonic()))
            return
        except KeyboardInterrupt:
            continue


def _add_launch_failures(builder: ResultBuilder, outcome: LaunchOutcome) -> None:
    """Workers that died (killed, out of memory, os._exit) become ``WorkerFailure`` records."""
    for exit_ in outcome.died:
        if any(f.rank == exit_.rank for f in builder.worker_failures):
            continue
        builder.worker_failures.append(WorkerFailure(exit_.rank, f"worker process {exit_.pid} {exit_.describe()}"))
    if outcome.error is not None:
        error = f"launcher: {type(outcome.error).__name__}: {outcome.error}"
        builder.worker_failures.append(WorkerFailure(-1, error))
    if outcome.leftover_pids:
        pids = ", ".join(map(str, outcome.leftover_pids))
        builder.worker_failures.append(WorkerFailure(-1, f"worker process(es) {pids} did not exit after SIGKILL"))


def _end_observer(obs: RunObserver, result: GenerationResult) -> None:
    """``on_end`` of one observer; a failing display must not keep the result from the caller."""
    try:
        obs.on_end(result)
    except Exception as exc:
        print(f"nbdist: {type(obs).__name__} failed at the end of the run: {exc!r}", file=sys.stderr)


def _read_logs(log_dir: str) -> dict[int, str]:
    logs: dict[int, str] = {}
    for path in sorted(Path(log_dir).glob("worker-*.log")):
        logs[int(path.stem.split("-")[1])] = path.read_text(encoding="utf-8", errors="replace")
    return logs
