"""``nbdist generate`` inside processes started by ``torchrun`` or ``accelerate launch`` (one or many nodes).

The launcher has already started one process per GPU (or per CPU slot), on one machine or several,
so nbdist forks nothing: every process runs the same worker function as under the notebook
(``run_worker``: ``PartialState``, ``split_between_processes``, image ``i`` from seed ``seed+i``) on its
share, and handles its own messages in a collector thread of its own.

How results reach disk:

1. Rank 0 picks the seed (unless ``--seed``) and a run token, broadcast to all (gloo).
2. Rank 0 drops a marker file named after the token in DIR; every rank looks for it, which tells it
   whether it shares DIR's filesystem with rank 0 (same machine, or NFS) or not (another node).
3. Each rank writes its PNGs (parameters in the text chunk) into its own DIR as they arrive, and a
   manifest of its own (``manifest.rank-R.jsonl``): nothing is lost if another rank dies.
4. When every rank is done, rank 0 gathers the manifest records, plus the PNG bytes of ranks that do
   not share its filesystem, writes those PNGs, appends the merged records to ``manifest.jsonl`` and
   writes ``index.html`` covering every image of the run. Then the per-rank manifests are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from .call_settings import image_size, resolve_call
from .jobs import ImageJob, make_jobs
from .model_files import model_files
from .options import GenerateOptions, NbdistUsageError
from .parent.machine.gpus import GpuQuery
from .sweep import parse_sweep

__all__ = ["LaunchEnv", "launched", "run_launched"]

# Set by torchrun (and so by ``accelerate launch --multi_gpu``, which runs torchrun) in every process.
_LAUNCH_VARS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a launcher's job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str


def launched(env: dict[str, str] | None = None) -> LaunchEnv | None:
    """The launcher's layout when this process was started by torchrun / accelerate launch, else None."""
    env = dict(os.environ) if env is None else env
    if not any(name in env for name in _LAUNCH_VARS) or "WORLD_SIZE" not in env:
        return None
    world = int(env["WORLD_SIZE"])
    launcher = "accelerate launch" if any(k.startswith("ACCELERATE_") for k in env) else "torchrun"
    return LaunchEnv(
        rank=int(env.get("RANK", "0")),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
        launcher=launcher,
    )


def _check(model: str, prompts: Sequence[str], options: GenerateOptions, env: LaunchEnv) -> tuple[str, str]:
    """Everything checkable before the process group forms; identical on every rank. Returns (device, dtype)."""
    from .parent.machine.devices import visible_gpu_count
    from .parent.machine.gpus import query_gpus
    from .pipelines import check_model_folder
    from .placement import check_placement

    _refuse_cluster(options, env)
    options.validate(previous_run=False)  # whether DIR already holds a run: rank 0 decides for all (_agree)
    if options.schedule not in (None, "static"):
        raise NbdistUsageError(
            f"--schedule dynamic needs workers forked by nbdist; under {env.launcher} the split is static"
        )
    if options.num_processes not in (None, env.world_size):
        raise NbdistUsageError(
            f"-n {options.num_processes}: {env.launcher} started {env.world_size} process(es); "
            "set the number with the launcher (--nproc_per_node / --num_processes) and drop -n"
        )
    query = query_gpus()
    gpus = visible_gpu_count(query)
    check_placement(options, gpus, launched_processes=env.world_size)
    if options.device == "cuda" and gpus == 0:
        raise NbdistUsageError("--device cuda: no GPU is visible to this process")
    device_type = "cpu" if options.device == "cpu" or gpus == 0 else "cuda"
    if device_type == "cuda" and env.local_world_size > gpus:
        raise NbdistUsageError(f"{env.launcher} started {env.local_world_size} processes here, but {gpus} GPU(s)")
    check_model_folder(model)
    files = model_files(model, options.revision)
    scale = files.vae_scale_factor() if files is not None else None
    if scale:
        options.check_size(scale)
    dtype = _dtype(model, options, device_type, query, env)
    _check_memory(model, options, device_type, dtype, query, env)
    return device_type, dtype


def _refuse_cluster(options: GenerateOptions, env: LaunchEnv) -> None:
    """``--cluster`` (or ``NBDIST_CLUSTER``) under a launcher: Ray actors are started by one driver, while the
    launcher has already started this job's processes; silently making the images here would ignore it."""
    from .cluster_address import cluster_from_env

    cluster = cluster_from_env(options.cluster)
    if cluster is not None:
        raise NbdistUsageError(
            f"--cluster {cluster}: {env.launcher} already started this job's processes; run nbdist generate "
            f"--cluster {cluster} once, without {env.launcher}, or leave --cluster out (NBDIST_CLUSTER=local)"
        )


def _check_memory(
    model: str, options: GenerateOptions, device_type: str, dtype: str, query: GpuQuery, env: LaunchEnv
) -> None:
    """--offload/--quantize need a GPU and their library; a model too big for this process's GPU (the one
    at ``local_rank``, or all of them with ``--device-map``) is refused before it loads, as in the notebook."""
    from .parent.machine.memory_fit import check_fit

    mine = query if options.device_map else GpuQuery(query.gpus[env.local_rank : env.local_rank + 1])
    check_fit(model, options, device_type, dtype, 1, mine)


def _dtype(model: str, options: GenerateOptions, device_type: str, query: GpuQuery, env: LaunchEnv) -> str:
    """``--dtype``, else the notebook's rule (``default_dtype``) for this family on this node's GPUs; rank 0 says why.

    Each process of a node uses CUDA device ``local_rank`` (or all of them with ``--device-map``),
    so the GPUs that count are the first ``local_world_size`` visible ones.
    """
    from .parent.machine.dtypes import default_dtype, family_of

    if options.dtype:
        return options.dtype
    used = query if options.device_map else GpuQuery(query.gpus[: env.local_world_size], query.problem)
    dtype, note = default_dtype(device_type, family_of(model), used)
    if note and env.rank == 0:
        print(note, file=sys.stderr, flush=True)
    return dtype


def _threads(device_type: str, env: LaunchEnv) -> int:
    """Torch threads per process: ``OMP_NUM_THREADS`` when set (torchrun sets 1 for several processes
    per node, and a user tunes it there), else this node's cores shared among its processes."""
    from .parent.machine.devices import cpu_count

    if device_type != "cpu":
        return 1
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, cpu_count() // env.local_world_size)


@contextlib.contextmanager
def _terminal() -> Iterator[TextIO]:
    """A stream on the real stderr, kept while the worker points fds 1 and 2 at its log; restored after."""
    saved_out, saved_err = os.dup(1), os.dup(2)
    stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        yield stream
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        stream.close()


def _say(text: str) -> None:
    print(f"nbdist: {text}", file=sys.stderr, flush=True)


def run_launched(model: str, prompts: Sequence[str], options: GenerateOptions, env: LaunchEnv) -> int:
    """Generate this process's share; on rank 0 also merge the manifest and write index.html. Exit code."""
    import torch.distributed as dist
    from accelerate import PartialState

    from .parent.results.observer import RunInfo

    device_type, dtype = _check(model, prompts, options, env)
    threads = _threads(device_type, env)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # else accelerate picks a number and warns
    PartialState(cpu=device_type == "cpu")  # forms the process group (gloo on CPU, NCCL on GPU)
    # Object collectives go over gloo in a group of their own, with a timeout long enough for the slowest node.
    group = dist.new_group(backend="gloo", timeout=timedelta(days=7))
    started = time.monotonic()
    seed, folder, marker, same_disk = _agree(options, env, group)
    _one_run_per_folder(options, env, group, folder, marker, same_disk)

    opts = options.with_(
        seed=seed, schedule="static", sweep=parse_sweep(options.sweep) if options.sweep else {}, overwrite=False
    )
    jobs = make_jobs(prompts, opts.images_per_prompt, seed, opts.sweep)
    call = resolve_call(None, model, opts)  # the notebook's rule, from the model's config files
    height, width = image_size(call)
    info = RunInfo(jobs, opts, model, seed, env.world_size, device_type, height, width, call)
    if env.rank == 0:
        _say(f"{len(jobs)} image(s) of {model!r}, seed {seed}, on {env.world_size} process(es) ({env.launcher})")
    builder, writer, log = _make_share(model, info, device_type, dtype, threads, folder, env)

    payload = _payload(writer, builder, env.rank, same_disk, log)
    gathered: list[Any] | None = [None] * env.world_size if env.rank == 0 else None
    dist.gather_object(payload, gathered, dst=0, group=group)
    # Rank 0 answers for the whole run; the others exit 0 once their results are handed over, so the
    # launcher does not kill rank 0 while it is still writing the index.
    code = 0
    if env.rank == 0:
        assert gathered is not None
        code = _finish(folder, jobs, gathered, model, seed, env, time.monotonic() - started)
        marker.unlink(missing_ok=True)
    dist.barrier(group=group)  # index written: the per-rank manifests are no longer needed
    writer.manifest.unlink(missing_ok=True)
    dist.destroy_process_group()
    return code


def _agree(options: GenerateOptions, env: LaunchEnv, group: Any) -> tuple[int, Path, Path, bool]:
    """Rank 0's seed and run token for all; whether this rank shares DIR's filesystem with rank 0 (its marker)."""
    import torch.distributed as dist

    token = secrets.token_hex(8)
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    shared = [seed, token]
    dist.broadcast_object_list(shared, src=0, group=group)
    seed, token = shared
    folder = Path(options.save_dir or ".")
    marker = folder / f".nbdist-run-{token}"
    if env.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
    dist.barrier(group=group)
    folder.mkdir(parents=True, exist_ok=True)
    return seed, folder, marker, marker.exists()


def _one_run_per_folder(
    options: GenerateOptions, env: LaunchEnv, group: Any, folder: Path, marker: Path, same_disk: bool
) -> None:
    """Never mix runs: DIR holding an earlier run is refused on every rank, or cleared with ``--overwrite``.

    Each rank looks at its own DIR (a rank on rank 0's filesystem leaves that to rank 0), the verdicts
    are gathered, and all ranks act on the same answer before any of them writes a file: a refusal
    seen by one node alone would otherwise leave the others generating into a run that never finishes.
    """
    import torch.distributed as dist

    from .parent.output.previous_run import clear_previous_run, describe, previous_run

    mine = previous_run(folder) if env.rank == 0 or not same_disk else []
    held = describe(mine) if mine and not options.overwrite else ""
    verdicts: list[Any] = [None] * env.world_size
    dist.all_gather_object(verdicts, held, group=group)
    holders = [(rank, what) for rank, what in enumerate(verdicts) if what]
    if holders:
        if env.rank == 0:
            marker.unlink(missing_ok=True)
        dist.barrier(group=group)
        dist.destroy_process_group()
        rank, what = holders[0]
        where = "" if rank == 0 else f" on the node of rank {rank}"
        raise NbdistUsageError(
            f"--save-dir {str(folder)!r}{where} already holds a run ({what}): add --overwrite to replace it, "
            "or choose another folder"
        )
    if options.overwrite and (env.rank == 0 or not same_disk):
        clear_previous_run(folder)
    dist.barrier(group=group)  # cleared everywhere before anyone writes


def _make_share(
    model: str, info: Any, device_type: str, dtype: str, threads: int, folder: Path, env: LaunchEnv
) -> tuple[Any, Any, str]:
    """Run this rank's worker with its own collector: PNGs and a per-rank manifest as images arrive."""
    from .parent.output.saving import DiskWriter
    from .parent.output.terminal import TerminalProgress
    from .parent.results.collector import Collector, ResultBuilder
    from .spec import RunSpec
    from .worker import run_worker

    log_dir = tempfile.mkdtemp(prefix="nbdist-logs-")
    spec = RunSpec(
        jobs=info.jobs,
        options=info.options,
        device_type=device_type,
        dtype=dtype,
        threads_per_worker=threads,
        log_dir=log_dir,
        queue=queue.Queue(),
        pipeline=None,
        model=model,
        call=info.call if info.call.effective.get("steps") else None,  # else each worker asks its pipeline
    )
    builder = ResultBuilder()
    writer = DiskWriter(folder, manifest=f"manifest.rank-{env.rank}.jsonl")
    with _terminal() as terminal:
        progress = TerminalProgress(
            terminal, live=None if env.world_size == 1 else False, prefix=f"[rank {env.rank}] ", share_only=True
        )
        observers = [builder, progress, writer]
        for obs in observers:
            obs.on_start(info)
        collector = Collector(spec.queue, observers, 1)
        collector.start()
        try:
            run_worker(spec)
        finally:
            collector.finish()
            for obs in observers:
                obs.on_end(None)
    log = _read_log(log_dir, env.rank)
    shutil.rmtree(log_dir, ignore_errors=True)
    return builder, writer, log


def _read_log(log_dir: str, rank: int) -> str:
    path = Path(log_dir) / f"worker-{rank}.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _payload(writer: Any, builder: Any, rank: int, same_disk: bool, log: str) -> dict[str, Any]:
    """What this rank tells rank 0: its manifest records, failures, and PNG bytes if rank 0 cannot see them."""
    entries = []
    if writer.manifest.exists():
        entries = [json.loads(line) for line in writer.manifest.read_text(encoding="utf-8").splitlines() if line]
    files = {} if same_disk else {e["file"]: (writer.folder / e["file"]).read_bytes() for e in entries}
    failures = {r.index: r.error for r in builder.records.values() if r.error is not None}
    worker_errors = [f.error for f in builder.worker_failures]
    return {
        "rank": rank,
        "entries": entries,
        "files": files,
        "failures": failures,
        "worker_errors": worker_errors,
        "log": log if worker_errors else "",
    }


def _finish(
    folder: Path, jobs: list[ImageJob], gathered: list[Any], model: str, seed: int, env: LaunchEnv, seconds: float
) -> int:
    """Rank 0: write the other nodes' PNGs, the merged manifest and index.html; report. Exit code."""
    from .parent.output.index_page import write_index

    entries: list[dict[str, Any]] = []
    failures: dict[int, str] = {}
    for part in gathered:
        for name, data in part["files"].items():
            tmp = folder / f"{name}.part"
            tmp.write_bytes(data)
            tmp.replace(folder / name)
        entries.extend(part["entries"])
        failures.update(part["failures"])
        for error in part["worker_errors"]:
            _say(f"rank {part['rank']} failed: {error}")
            if part["log"]:
                _say(f"rank {part['rank']} log (last lines):\n" + "\n".join(part["log"].splitlines()[-15:]))
    entries.sort(key=lambda e: e["index"])
    with open(folder / "manifest.jsonl", "a", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    done = len({e["index"] for e in entries})
    missing = len(jobs) - done - len(failures)
    summary = f"{done} of {len(jobs)} images in {seconds:.1f} s on {env.world_size} process(es), seed {seed}"
    if failures:
        summary += f", {len(failures)} failed"
    if missing:
        summary += f", {missing} not generated"
    index = write_index(folder, jobs, entries, failures=failures, heading=f"{model}: {summary}")
    _say(summary)
    _say(f"wrote {done} PNG(s), manifest.jsonl and {index.name} in {folder}")
    return 0 if done == len(jobs) else 1
