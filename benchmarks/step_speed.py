"""``--compile`` and ``--cache`` measured against their baselines in the same run, through ``nbdist.generate``.

Compile, per model: an uncompiled warm pool (a warm-up cell, then ``--cells`` measured cells), then a
``--compile`` pool (its first cell compiles; the measured cells are the later ones, on the same worker
pids), then the uncompiled pool again, so a drift of the shared machine shows as a difference between
the two baselines. Per-image time is each image's worker-side seconds (median over the cell's images,
then over cells); the first image of a compiling cell holds the compile and is reported apart.

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


def per_image(results: list[Any], skip_first: bool = False) -> float:
    """Median over cells of each cell's median image seconds."""
    medians = [statistics.median(r.seconds for r in res.records[int(skip_first) :]) for res in results]
    return statistics.median(medians)


def compile_rows(name: str, prompts: list[str], args: argparse.Namespace) -> list[str]:
    model = model_folder(name)
    nbdist.shutdown()
    eager = [cell(model, prompts, args) for _ in range(args.cells + 1)][1:]
    nbdist.shutdown()
    started = time.perf_counter()
    first = cell(model, prompts, args, compile=True)
    first_wall = time.perf_counter() - started
    later = [cell(model, prompts, args, compile=True) for _ in range(args.cells)]
    pids = {res.workers[0].pid for res in [first, *later]}
    notes = [r.note for res in later for r in res]
    nbdist.shutdown()
    eager_after = [cell(model, prompts, args) for _ in range(args.cells + 1)][1:]
    nbdist.shutdown()
    base, base_after, compiled = per_image(eager), per_image(eager_after), per_image(later)
    diff = max(
        int(np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max())
        for a, b in zip(eager[0], later[0], strict=True)
    )
    compile_note = first[0].note or "no compile note"
    return [
        f"| {name} | uncompiled, warm (before) | {base:.3f} | 1.00 | – | |",
        f"| {name} | --compile, first cell | {statistics.median(r.seconds for r in first.records[1:]):.3f} | "
        f"{base / statistics.median(r.seconds for r in first.records[1:]):.2f} | – | cell {first_wall:.1f} s; "
        f"first image {first[0].seconds:.1f} s: {compile_note} |",
        f"| {name} | --compile, later cells | {compiled:.3f} | {base / compiled:.2f} | {diff} | "
        f"same pid: {len(pids) == 1}; compile notes in later cells: {sum(n is not None for n in notes)} |",
        f"| {name} | uncompiled, warm (after) | {base_after:.3f} | {base / base_after:.2f} | – | |",
    ]


def cache_rows(prompts: list[str], args: argparse.Namespace) -> list[str]:
    model = model_folder("flux")
    nbdist.shutdown()
    cell(model, prompts, args)  # warm-up
    runs: dict[str, list[Any]] = {c: [] for c in CACHES}
    for _ in range(args.repeat):
        for choice in CACHES:
            runs[choice].append(cell(model, prompts, args, cache=choice))
    nbdist.shutdown()
    base = per_image(runs["off"])
    rows = []
    for choice in CACHES:
        seconds = per_image(runs[choice])
        skipped = [r.skipped_steps or 0 for res in runs[choice] for r in res]
        diff = max(
            int(np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max())
            for a, b in zip(runs["off"][0], runs[choice][0], strict=True)
        )
        rows.append(
            f"| {choice} | {seconds:.3f} | {base / seconds:.2f} | {statistics.mean(skipped):.1f} of {args.steps} "
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
        print("| model | pool | s / image | speed × uncompiled | max diff /255 | notes |")
        print("|---|---|---|---|---|---|")
        for name in args.models.split(","):
            print("\n".join(compile_rows(name, prompts, args)), flush=True)
        print()
    if args.skip != "cache":
        print("| --cache (tiny Flux) | s / image | speed × off | skipped steps per image | max diff /255 vs off |")
        print("|---|---|---|---|---|")
        print("\n".join(cache_rows(prompts, args)), flush=True)
    print(f"\nLoad after: {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
