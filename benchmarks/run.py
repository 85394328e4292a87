"""Benchmark nbdist against a plain loop and the source document's two recipes, side by side.

    .venv/bin/python benchmarks/run.py            # full run (~10 min on 2 cores), writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick    # plumbing check: tiny pipeline, 4 prompts, no levers

Same pipeline, prompts, steps, guidance and per-image seeds everywhere; the runner checks that every
scenario made the same pixels as the plain loop (max difference, 0..255). Scenarios:

(a) plain loop in one process (``plain_loop.py``), and the same with 1 thread after a warm-up image,
    which gives the one-worker one-thread rate that scaling efficiency is measured against;
(b) the Accelerate recipe under ``accelerate launch --multi_gpu --num_processes N``;
(c) the PyTorch Distributed recipe (``mp.spawn``, every process loads the pipeline);
(d) ``%%distgen`` in a real kernel: cold, warm, the speed levers, and a plain loop in the same kernel.

On a GPU machine the same command runs everything on CUDA in fp16 for every ``-n`` in ``--ns``
(default 1..number of GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import PssSampler, max_abs_diff  # noqa: E402
from encoding import encoding_table  # noqa: E402
from notebook_bench import run_notebook_scenarios  # noqa: E402

STEPS = {"tiny": 4, "cpu": 4}
ANALYSIS = "## Analysis"  # RESULTS.md from this heading on is hand-written and kept across runs


@dataclass
class Row:
    """One measured scenario."""

    name: str
    kind: str  # "e2e": from process launch to exit; "warm": model already loaded
    n: int
    wall: float
    first_image: float | None
    images: int
    peak_pss: int
    max_diff: int | None = None
    note: str = ""
    latency: float | None = None  # one image's latency in this scenario (median), when known

    @property
    def rate(self) -> float:
        return self.images / self.wall


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # every scenario picks its own threads, as a user's would
    env.update(TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    return env


def run_process(
    name: str, cmd: list[str] | list[list[str]], out: Path, n: int, note: str = ""
) -> tuple[Row, dict[str, float], list[dict[str, float]]]:
    """Run a scenario (one command, or several started together); times count from the launch.

    Returns the row, the phases reported by its processes merged, and each process's own phases.
    """
    cmds = [cmd] if isinstance(cmd[0], str) else cmd
    stem = name.split()[0].strip("()")
    images_dir = out / stem
    images_dir.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.log", "w") as log:
        started = time.time()
        procs = [
            subprocess.Popen(
                [*c, "--out", str(images_dir), "--events", str(out / f"{stem}.events-p{k}.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                cwd=HERE,
            )
            for k, c in enumerate(cmds)
        ]
        with PssSampler([p.pid for p in procs]) as sampler:
            rcs = [p.wait() for p in procs]
        ended = time.time()
    if any(rcs):
        raise RuntimeError(
            f"{name} failed ({rcs}); see {out / f'{stem}.log'}:\n" + (out / f"{stem}.log").read_text()[-3000:]
        )
    times: list[float] = []
    merged: dict[str, float] = {}
    each: list[dict[str, float]] = []
    for path in sorted(out.glob(f"{stem}.events*.json")):
        data = json.loads(path.read_text())
        times += data["images"].values()
        merged.update(data["phases"])
        each.append({**data["phases"], "images": len(data["images"])})
        path.unlink()
    row = Row(
        name, "e2e", n, ended - started, min(times) - started if times else None, len(times), sampler.peak, None, note
    )
    return row, merged, each


def compare_pngs(reference: Path, other: Path) -> int:
    from PIL import Image

    names = sorted(p.name for p in reference.glob("*.png"))
    if names != sorted(p.name for p in other.glob("*.png")):
        raise RuntimeError(f"{other} does not hold the same images as {reference}")
    return max_abs_diff((Image.open(reference / n) for n in names), (Image.open(other / n) for n in names))


def bench_size(size: str, model: str, args: argparse.Namespace, device: str, out: Path) -> tuple[list[Row], float]:
    """All scenarios for one pipeline; returns the rows and the one-worker one-thread rate."""
    py = sys.executable
    steps = args.steps or (2 if args.quick else STEPS.get(size, 4))
    common = ["--model", model, "--prompts", str(args.prompts), "--steps", str(steps), "--device", device]
    rows: list[Row] = []
    print(f"[{size}] (a) plain loop, 1 thread, after a warm-up image (reference rate)", flush=True)
    one = ["--threads", "1"] if device == "cpu" else []
    ref, ref_phases, _ = run_process(
        "(a1) plain loop, 1 thread", [py, "plain_loop.py", *common, *one, "--warmup"], out, 1
    )
    ref_rate = args.prompts / ref_phases["generate"]
    print(f"[{size}] (a) plain loop", flush=True)
    a, a_phases, _ = run_process("(a) plain loop", [py, "plain_loop.py", *common], out, 1)
    a.note = f"load {a_phases['load']:.2f} s, loop {a_phases['generate']:.2f} s, {int(a_phases['threads'])} threads"
    a.max_diff = 0
    rows.append(a)
    loop_only = Row(
        "(a) plain loop, loop only",
        "warm",
        1,
        a_phases["generate"],
        None,
        args.prompts,
        a.peak_pss,
        0,
        "the loop part of (a): model already loaded",
        latency=a_phases["generate"] / args.prompts,
    )
    rows.append(loop_only)
    ref.kind, ref.wall, ref.note = "warm", ref_phases["generate"], "loop only, after one warm-up image"
    ref.name = "(a1) plain loop, 1 thread, loop only"
    ref.max_diff = compare_pngs(out / "a", out / "a1")
    ref.first_image, ref.latency = None, ref_phases["generate"] / args.prompts
    rows.append(ref)
    if device == "cpu":
        for n in (k for k in args.ns if k > 1):
            print(f"[{size}] (a2) {n} independent 1-thread loops at once (what the hardware allows)", flush=True)
            cmds = [[py, "plain_loop.py", *common, *one, "--warmup", "--share", f"{r}/{n}"] for r in range(n)]
            ctl, _, each = run_process(f"(a2) {n} independent 1-thread loops", cmds, out, n)
            rate = sum(e["images"] / e["generate"] for e in each)
            ctl.kind, ctl.wall = "warm", args.prompts / rate
            ctl.first_image, ctl.max_diff = None, compare_pngs(out / "a", out / "a2")
            ctl.note = "control: separate processes, nothing shared, no communication; loop only, after a warm-up"
            ctl.latency = statistics.median(e["generate"] / e["images"] for e in each)
            rows.append(ctl)
    for n in args.ns:
        launch = [str(Path(py).parent / "accelerate"), "launch", "--num_processes", str(n), "--num_machines", "1"]
        launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if n > 1:
            launch.insert(2, "--multi_gpu")
        print(f"[{size}] (b) accelerate launch -n {n}", flush=True)
        b, b_phases, _ = run_process(
            f"(b) accelerate launch -n {n}", [*launch, "recipe_accelerate.py", *common], out, n
        )
        b.note = f"{int(b_phases.get('threads', 0))} threads/process; every process loads the model"
        b.max_diff = compare_pngs(out / "a", out / "b")
        rows.append(b)
        print(f"[{size}] (c) mp.spawn -n {n}", flush=True)
        c_cmd = [py, "recipe_torch_dist.py", *common, "--num-processes", str(n)]
        c, c_phases, _ = run_process(f"(c) mp.spawn -n {n}", c_cmd, out, n)
        c.note = f"{int(c_phases.get('threads', 0))} threads/process; {n + 1} processes load the model"
        c.max_diff = compare_pngs(out / "a", out / "c")
        rows.append(c)
        print(f"[{size}] (d) %%distgen -n {n} in a kernel", flush=True)
        side = _default_side(model)
        cells = run_notebook_scenarios(model, args.prompts, steps, n, device, out, not args.quick, side, args.repeat)
        for cell in cells:
            kind = "e2e" if cell.name == "cold" else "warm"
            nn = 1 if cell.name.startswith("plain") or "-n 1" in cell.name else n
            rows.append(
                Row(
                    f"(d) %%distgen -n {n}: {cell.name}" if not cell.name.startswith("plain") else f"(d) {cell.name}",
                    kind,
                    nn,
                    cell.wall,
                    cell.first_image,
                    cell.images,
                    cell.peak_pss,
                    cell.max_diff,
                    cell.note,
                    cell.latency,
                )
            )
        rows[-len(cells)].max_diff = compare_pngs(out / "a", out / "d")
    return rows, ref_rate


def _default_side(model: str) -> int:
    cfg_dir = Path(model)
    try:
        unet = json.loads((cfg_dir / "unet" / "config.json").read_text())
        vae = json.loads((cfg_dir / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError):
        return 512


def machine() -> str:
    import accelerate
    import diffusers
    import psutil
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
        gpu = f"; GPUs: {out.replace(chr(10), ', ')}" if out else ""
    except (OSError, subprocess.TimeoutExpired):
        pass
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM{gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"accelerate {accelerate.__version__}, {platform.platform()}"
    )


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def table(rows: list[Row], ref_rate: float) -> str:
    """Markdown table; ratios are speed-ups (baseline wall / this wall) and memory multiples."""
    a = next(r for r in rows if r.name == "(a) plain loop")
    in_kernel = next((r for r in rows if r.name.startswith("(d) plain loop")), None)
    warm_base = in_kernel or next(r for r in rows if r.name.startswith("(a) plain loop, loop only"))
    b = {r.n: r for r in rows if r.name.startswith("(b)")}
    lines = [
        "| scenario | wall s | first image s | images/s | scaling eff. | peak PSS MiB | mem × 1 proc | "
        "speed × plain loop | speed × (b) | max diff | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = a if r.kind == "e2e" else warm_base
        rb = b.get(r.n) or (next(iter(b.values())) if b else None)
        lines.append(
            f"| {r.name} | {r.wall:.2f} | {_fmt(r.first_image)} | {r.rate:.2f} | {r.rate / (r.n * ref_rate):.2f} | "
            f"{r.peak_pss / 2**20:.0f} | {r.peak_pss / base.peak_pss:.2f} | {base.wall / r.wall:.2f} | "
            f"{_fmt(rb.wall / r.wall if rb else None)} | {_fmt(r.max_diff, 'd')} | {r.note} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row], ref_rate: float, n: int) -> list[str]:
    """The issue's targets, checked on this pipeline's rows for ``-n n`` (and the dynamic schedule)."""

    def row(name: str) -> Row | None:
        return next((r for r in rows if r.name == name), None)

    warm = row(f"(d) %%distgen -n {n}: warm")
    dyn = row(f"(d) %%distgen -n {n}: warm --schedule dynamic")
    cold = row(f"(d) %%distgen -n {n}: cold")
    b = row(f"(b) accelerate launch -n {n}")
    ceiling = row(f"(a2) {n} independent 1-thread loops")
    loops = [r for r in (row("(d) plain loop in the kernel"), row("(a) plain loop, loop only")) if r is not None]
    if warm is None or cold is None or b is None or not loops:
        return []
    out = []

    def check(label: str, ok: bool, detail: str) -> None:
        out.append(f"- {'MET' if ok else 'NOT MET'}: {label}: {detail}")

    def eff(r: Row) -> float:
        return r.rate / (n * ref_rate)

    detail = f"{eff(warm):.3f} ({warm.rate:.3f} img/s vs {n} × {ref_rate:.3f}; target ≥ 0.9)"
    if dyn is not None:
        detail += f"; --schedule dynamic {eff(dyn):.3f}"
    if ceiling is not None:
        detail += f"; {n} independent processes with nothing shared reach {eff(ceiling):.3f} on this machine"
    check("warm scaling efficiency", eff(warm) >= 0.9, detail)
    speedups = [(loop.wall / warm.wall, loop.name) for loop in loops]
    detail = "; ".join(f"{x:.2f}× {name}" for x, name in speedups) + " (target ≥ 1.1)"
    if dyn is not None:
        detail += "; dynamic: " + ", ".join(f"{loop.wall / dyn.wall:.2f}×" for loop in loops)
    check("warm speed vs the plain loop", min(x for x, _ in speedups) >= 1.1, detail)
    check("end to end vs (b), cold cell", b.wall / cold.wall >= 1.8, f"{b.wall / cold.wall:.2f}× (target ≥ 1.8)")
    check("end to end vs (b), warm cell", b.wall / warm.wall >= 1.8, f"{b.wall / warm.wall:.2f}× (target ≥ 1.8)")
    if warm.first_image is not None and warm.latency is not None:
        margin = warm.first_image - warm.latency
        check(
            "warm time to first image ≤ one image's latency + 0.5 s",
            margin <= 0.5,
            f"first image {warm.first_image:.2f} s = a worker's image latency {warm.latency:.2f} s + {margin:.2f} s "
            f"(the plain loop's latency at all threads: {loops[0].wall / loops[0].images:.2f} s)",
        )
    base = loops[0]
    mem = warm.peak_pss / base.peak_pss
    check(
        "host memory, workers vs one process",
        mem <= 1.3,
        f"{mem:.2f}× ({warm.peak_pss / 2**20:.0f} MiB vs {base.peak_pss / 2**20:.0f} MiB, {base.name}; target ≤ 1.3)",
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny pipeline, 4 prompts, 2 steps, no lever cells")
    parser.add_argument("--sizes", default=None, help="comma-separated tiny pipeline sizes (default tiny,cpu)")
    parser.add_argument("--model", help="benchmark this model (folder or hub id) instead of the tiny pipelines")
    parser.add_argument("--prompts", type=int, default=None, help="number of prompts (default 12; quick: 4)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 4 per tiny size; quick: 2)")
    parser.add_argument("--ns", default=None, help="worker counts, comma-separated (default: 2 on CPU, 1..GPUs)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--repeat", type=int, help="runs of the warm cells and the in-kernel loop, median kept (default 3; quick: 1)"
    )
    parser.add_argument("--out", type=Path, help="folder for images and logs (default: a temp folder)")
    parser.add_argument("--results", type=Path, help="markdown to write (default: benchmarks/RESULTS.md; quick: none)")
    args = parser.parse_args(argv)
    from nbdist.parent.machine.devices import visible_gpu_count
    from nbdist.tiny import ensure_tiny_pipeline

    gpus = visible_gpu_count()
    device = args.device if args.device != "auto" else ("cuda" if gpus else "cpu")
    args.prompts = args.prompts or (4 if args.quick else 12)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.ns = (
        [int(x) for x in args.ns.split(",")] if args.ns else (list(range(1, gpus + 1)) if device == "cuda" else [2])
    )
    sizes = [args.model] if args.model else (args.sizes or ("tiny" if args.quick else "tiny,cpu")).split(",")
    results = args.results or (None if args.quick else HERE / "RESULTS.md")
    out = args.out or Path(tempfile.mkdtemp(prefix="nbdist-bench-"))
    load_before = os.getloadavg()
    sections = []
    for size in sizes:
        model = size if args.model else str(ensure_tiny_pipeline(size))
        size_out = out / Path(size).name
        size_out.mkdir(parents=True, exist_ok=True)
        rows, ref_rate = bench_size(size, model, args, device, size_out)
        text = table(rows, ref_rate)
        checks = [line for n in args.ns if n > 1 for line in targets(rows, ref_rate, n)]
        section = f"### {size}\n\n{text}\n\nTargets (-n {','.join(map(str, args.ns))}):\n\n" + "\n".join(checks)
        print(section, flush=True)
        sections.append(section)
    enc = encoding_table()
    sections.append(f"### Handing an image over (encoding off the critical path)\n\n{enc}")
    print(enc, flush=True)
    load_after = os.getloadavg()
    header = (
        f"Machine: {machine()}.\n\nLoad average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}. "
        f"{args.prompts} prompts, device {device}, images and logs in {out}.\n"
    )
    print(header)
    if results is not None:
        kept = ""
        if results.exists():  # a hand-written analysis below the tables survives a re-run
            previous = results.read_text(encoding="utf-8")
            kept = previous[previous.index(ANALYSIS) :] if ANALYSIS in previous else ""
        results.write_text(_results_doc(header, sections, argv) + ("\n" + kept if kept else ""), encoding="utf-8")
        print(f"wrote {results}")


def _results_doc(header: str, sections: list[str], argv: list[str] | None) -> str:
    command = " ".join([".venv/bin/python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    return f"# Benchmark results\n\nGenerated by `{command.strip()}`.\n\n{header}\n" + "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    main()
