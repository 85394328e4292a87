"""``--compile`` and ``--cache`` measured against their baselines in the same run, through ``nbdist.generate``.

Compile, per model: an uncompiled warm pool (a warm-up cell, then ``--cells`` measured cells), then a
``--compile`` pool (its first cell compiles; the measured cells are the later ones, on the same worker
pids), then the uncompiled pool again, so a drift of the shared machine shows as a difference between
the two baselines. Per-image time is each image's worker-side seconds (median over the cell's images,
then over cells); the first image of a compiling cell holds the compile and is reported apart. Worker
CPU seconds per image (the worker process's user + system time over a cell, divided by its images) is
the figure to trust on a machine shared with other jobs: waiting for a core does not count in it.

Cache, on the Flux-shaped tiny model: one warm pool, cells with ``--cache off``, ``fbc=T`` for a few
thresholds and ``taylorseer``, interleaved ``--repeat`` times; per-image seconds, skipped steps per image
and the largest pixel difference against ``off``.

    python benchmarks/step_speed.py [--models flux,sd-cpu] [-n 1] [--prompts 6] [--steps 8] [--cells 3]

Prints markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import machine

import nbdist

CACHES = ("off", "fbc=0.05", "fbc=0.1", "fbc=0.2", "fbc=0.5", "fbc=1.0", "taylorseer")


def model_folder(name: str) -> str:
    """``flux`` (the Flux-shaped tiny family), ``sd-tiny`` / ``sd-cpu`` (the tiny SD pipeline's sizes)."""
    if name.startswith("sd-"):
        from nbdist.tiny import ensure_tiny_pipeline

        return str(ensure_tiny_pipeline(name[3:]))
    from nbdist.tiny_families import ensure_family

    return str(ensure_family(name))


def cell(model: str, prompts: list[str], args: argparse.Namespace, **options: Any) -> Any:
    result = nbdist.generate(
        model, prompts, steps=args.steps, seed=0, num_processes=args.n, device="cpu", save=False, **options
    )
    if not result.complete:
        raise RuntimeError(result.summary())
    return result


def warm_cells(model: str, prompts: list[str], args: argparse.Namespace, count: int, **options: Any) -> Any:
    """``count`` cells on the pool the one before them left warm: their results and worker CPU s per image."""
    results, cpu = [], []
    previous = cell(model, prompts, args, **options) if count else None
    for _ in range(count):
        worker = psutil.Process(previous.workers[0].pid)
        before = sum(worker.cpu_times()[:2])
        previous = cell(model, prompts, args, **options)
        cpu.append((sum(worker.cpu_times()[:2]) - before) / len(prompts))
        results.append(previous)
    return results, statistics.median(cpu)


def per_image(results: list[Any], skip_first: bool = False) -> float:
    """Median over cells of each cell's median image seconds."""
    medians = [statistics.median(r.seconds for r in res.records[int(skip_first) :]) for res in results]
    return statistics.median(medians)


def compile_rows(name: str, prompts: list[str], args: argparse.Namespace) -> list[str]:
    model = model_folder(name)
    nbdist.shutdown()
    eager, eager_cpu = warm_cells(model, prompts, args, args.cells)
    nbdist.shutdown()
    started = time.perf_counter()
    first = cell(model, prompts, args, compile=True)
    first_wall = time.perf_counter() - started
    later, later_cpu = [], []
    for _ in range(args.cells):
        worker = psutil.Process((later or [first])[-1].workers[0].pid)
        before = sum(worker.cpu_times()[:2])
        later.append(cell(model, prompts, args, compile=True))
        later_cpu.append((sum(worker.cpu_times()[:2]) - before) / len(prompts))
    compiled_cpu = statistics.median(later_cpu)
    pids = {res.workers[0].pid for res in [first, *later]}
    notes = [r.note for res in later for r in res]
    nbdist.shutdown()
    eager_after, after_cpu = warm_cells(model, prompts, args, args.cells)
    nbdist.shutdown()
    base, base_after, compiled = per_image(eager), per_image(eager_after), per_image(later)
    diff = max(
        int(np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max())
        for a, b in zip(eager[0], later[0], strict=True)
    )
    compile_note = first[0].note or "no compile note"
    rest = statistics.median(r.seconds for r in first.records[1:])
    return [
        f"| {name} | uncompiled, warm (before) | {base:.3f} | {eager_cpu:.3f} | 1.00 / 1.00 | – | |",
        f"| {name} | --compile, first cell | {rest:.3f} | – | {base / rest:.2f} / – | – | cell {first_wall:.1f} s; "
        f"first image {first[0].seconds:.1f} s: {compile_note} |",
        f"| {name} | --compile, later cells | {compiled:.3f} | {compiled_cpu:.3f} | {base / compiled:.2f} / "
        f"{eager_cpu / compiled_cpu:.2f} | {diff} | same pid: {len(pids) == 1}; compile notes in later cells: "
        f"{sum(n is not None for n in notes)} |",
        f"| {name} | uncompiled, warm (after) | {base_after:.3f} | {after_cpu:.3f} | {base / base_after:.2f} / "
        f"{eager_cpu / after_cpu:.2f} | – | |",
    ]


def cache_rows(prompts: list[str], args: argparse.Namespace) -> list[str]:
    model = model_folder("flux")
    nbdist.shutdown()
    worker = psutil.Process(cell(model, prompts, args).workers[0].pid)  # warm-up; one worker serves every cell
    runs: dict[str, list[Any]] = {c: [] for c in CACHES}
    cpu: dict[str, list[float]] = {c: [] for c in CACHES}
    for _ in range(args.repeat):
        for choice in CACHES:
            before = sum(worker.cpu_times()[:2])
            runs[choice].append(cell(model, prompts, args, cache=choice))
            cpu[choice].append((sum(worker.cpu_times()[:2]) - before) / len(prompts))
    nbdist.shutdown()
    base, base_cpu = per_image(runs["off"]), statistics.median(cpu["off"])
    rows = []
    for choice in CACHES:
        seconds, cpu_seconds = per_image(runs[choice]), statistics.median(cpu[choice])
        skipped = [r.skipped_steps or 0 for res in runs[choice] for r in res]
        diff = max(
            int(np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max())
            for a, b in zip(runs["off"][0], runs[choice][0], strict=True)
        )
        rows.append(
            f"| {choice} | {seconds:.3f} | {cpu_seconds:.3f} | {base / seconds:.2f} / {base_cpu / cpu_seconds:.2f} | "
            f"{statistics.mean(skipped):.1f} of {args.steps} "
            f"(min {min(skipped)}, max {max(skipped)}) | {diff} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="flux,sd-cpu", help="models for the compile rows")
    parser.add_argument("-n", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip", choices=("compile", "cache"), help="leave one part out")
    args = parser.parse_args(argv)
    prompts = [f"benchmark prompt number {i}" for i in range(args.prompts)]
    load = os.getloadavg()
    print(f"Machine: {machine()}.\n")
    print(f"-n {args.n}, {args.prompts} prompts, {args.steps} steps, device cpu; load before {load[0]:.2f}.\n")
    if args.skip != "compile":
        print(
            "| model | pool | s / image | worker CPU s / image | speed × uncompiled (s / CPU) | max diff /255 | notes |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in args.models.split(","):
            print("\n".join(compile_rows(name, prompts, args)), flush=True)
        print()
    if args.skip != "cache":
        print(
            "| --cache (tiny Flux) | s / image | worker CPU s / image | speed × off (s / CPU) "
            "| skipped steps per image | max diff /255 vs off |"
        )
        print("|---|---|---|---|---|---|")
        print("\n".join(cache_rows(prompts, args)), flush=True)
    print(f"\nLoad after: {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
