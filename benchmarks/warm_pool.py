"""Warm pool against a fresh fork per cell, in one real kernel (jupyter_client), same process of measurement.

Cells, all ``%%distgen -n N`` on the same pipeline and prompts, timed as a front end sees them (first
image = the first gallery image update):

- fresh: ``%distgen --shutdown`` before each cell, so every cell forks, sets up and places the pipeline
  (what every cell cost before the warm pool);
- warm: the same cell on the workers of the cell before;
- plain: the same images in one process, one thread (the kernel itself): one image's latency, and the
  ideal rate of N one-thread workers (N / latency) for the scaling efficiency;
- interrupt: a long run interrupted at its first image; the time until the cell is over, minus one
  denoising step, and whether the worker pids are the same afterwards.

    python benchmarks/warm_pool.py [--size cpu] [--prompts 12] [--steps 4] [-n 2] [--repeat 3]

Prints a table with ratios against the baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kernel import Kernel
from test_faults import OnFirstImage, is_image_update, workers_of


def first_image(kernel: Kernel, code: str) -> tuple[float, float]:
    """(seconds to the first gallery image, seconds for the whole cell)."""
    seen: list[float] = []
    ex = kernel.execute(code, timeout=900, on_message=lambda r: seen.append(r.at) if is_image_update(r) else None)
    if ex.error:
        raise RuntimeError(f"{ex.error['ename']}: {ex.error['evalue']}")
    return (seen[0] if seen else float("nan")), ex.wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="cpu", help="tiny pipeline size (tiny or cpu)")
    parser.add_argument("--model", help="a model folder or hub id instead of the tiny pipeline")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    from nbdist.tiny import ensure_tiny_pipeline

    model = args.model or str(ensure_tiny_pipeline(args.size))
    prompts = "\n".join(f"benchmark prompt number {i}" for i in range(args.prompts))
    flags = f"-n {args.n} --steps {args.steps} --seed 0 --device {args.device}"
    cell = f"%%distgen --model {model} {flags} -o res\n{prompts}"
    with Kernel() as k:
        assert k.execute("%load_ext nbdist").error is None
        first_image(k, cell)  # imports, model load into the kernel's cache
        fresh, warm = [], []
        for _ in range(args.repeat):
            k.execute("%distgen --shutdown")
            fresh.append(first_image(k, cell))
            warm.append(first_image(k, cell))
        latency = None if args.device == "cuda" else plain_latency(k, model, args.steps)
        interrupt = measure_interrupt(k, model, args)
        sweeps = {schedule: measure_sweep(k, model, args, schedule) for schedule in ("static", "dynamic")}
    report(args, fresh, warm, latency, interrupt)
    for schedule, (eff, wall) in sweeps.items():
        print(f"sweep steps=10,40 x guidance x 2 prompts, --schedule {schedule}: {wall:.2f} s, {eff:.3f} of ideal")


LATENCY = """
import time, torch, nbdist.pipelines
_pipe, _threads, _lat = nbdist.pipelines.cached_pipeline({model!r}, "float32"), torch.get_num_threads(), []
_pipe.set_progress_bar_config(disable=True)
torch.set_num_threads(1)
for _ in range(3):
    _t = time.perf_counter()
    _pipe("x", num_inference_steps={steps}, generator=torch.Generator("cpu").manual_seed(0))
    _lat.append(time.perf_counter() - _t)
torch.set_num_threads(_threads)
"""


def plain_latency(k: Kernel, model: str, steps: int) -> float:
    """One image in one process with one thread (best of 3): the baseline of first image and scaling."""
    ex = k.execute(LATENCY.format(model=model, steps=steps), timeout=600)
    if ex.error:
        raise RuntimeError(ex.error["evalue"])
    return float(k.value("min(_lat)"))


def measure_sweep(k: Kernel, model: str, args: argparse.Namespace, schedule: str) -> tuple[float, float]:
    """(efficiency, seconds) of a 2-prompt steps=10,40 x guidance=3,5,7.5 sweep; ideal: image seconds / workers."""
    sweep = "--sweep steps=10,40 --sweep guidance=3,5,7.5"
    cell = f"%%distgen --model {model} -n {args.n} --seed 0 {sweep} --schedule {schedule} -o sw\na\nb"
    if k.execute(cell, timeout=900).error:
        raise RuntimeError("sweep cell failed")
    busy, wall = k.value("(sum(r.seconds for r in sw), sw.seconds)")
    return busy / args.n / wall, wall


def measure_interrupt(k: Kernel, model: str, args: argparse.Namespace) -> tuple[float, float, bool]:
    """(cell over after the interrupt, one denoising step, same pids afterwards)."""
    steps = 40
    prompts = "\n".join(f"p{i}" for i in range(4 * args.n))
    hook = OnFirstImage(k, lambda h: h.kernel.km.interrupt_kernel())
    k.execute(f"%%distgen --model {model} -n {args.n} --steps {steps} --seed 0 -o res\n{prompts}", on_message=hook)
    over = time.monotonic() - (hook.at or time.monotonic())
    step = k.value(f"max(r.seconds for r in res if r.ok) / {steps}")
    same = sorted(p.pid for p in workers_of(k.pid)) == sorted(hook.worker_pids)
    return over, step, same


def report(args: argparse.Namespace, fresh: list, warm: list, latency: float | None, interrupt: tuple) -> None:
    med = statistics.median
    f_first, f_wall = med(x[0] for x in fresh), med(x[1] for x in fresh)
    w_first, w_wall = med(x[0] for x in warm), med(x[1] for x in warm)
    print(f"\n{args.prompts} images, {args.steps} steps, -n {args.n}, {args.repeat} repeats (medians)\n")
    print("| cell | first image (s) | cell (s) | images/s | vs fresh |")
    print("|---|---|---|---|---|")
    print(f"| fresh fork per cell | {f_first:.2f} | {f_wall:.2f} | {args.prompts / f_wall:.2f} | 1.00 |")
    print(f"| warm pool | {w_first:.2f} | {w_wall:.2f} | {args.prompts / w_wall:.2f} | {f_wall / w_wall:.2f}x |")
    if latency:
        ideal = args.n / latency
        print(f"| one image, one thread, in-process | {latency:.2f} | | {1 / latency:.2f} | |")
        print(f"\nwarm first image - one image's latency: {w_first - latency:+.2f} s (target <= +0.10 s)")
        efficiency = args.prompts / w_wall / ideal
        print(f"scaling efficiency: {efficiency:.3f} of {args.n} one-thread workers (target >= 0.97)")
    over, step, same = interrupt
    print(
        f"interrupt -> cell over: {over:.2f} s, one step {step:.3f} s: {over - step:+.2f} s over one step "
        f"(target <= +0.30 s); same worker pids afterwards: {same}"
    )


if __name__ == "__main__":
    main()
