"""Live previews: what they cost the run, and what they add to the gallery's widget traffic, in one real kernel.

The same ``%%distgen -n N`` cell (live gallery, warm workers) with ``--preview off`` and with
``--preview auto``, interleaved ``--repeat`` times (off, auto, auto, off, ...) so a drift in the machine's
load hits both alike; the baseline is the ``off`` cell measured in the same run. Per model: the median
cell time and the workers' median seconds per image, each against ``off``; the previews the workers
made per image (``on_preview`` in a plain ``nbdist.generate`` call on the same warm workers) times the
cost of one (the linear map and the JPEG, timed here on one thread), as a share of an image's time; and
the widget messages and bytes (JSON and binary buffers) per image that reached the front end. On a
machine shared with other work the end-to-end times move by more than the previews cost; the share
column is the measure that does not.

    python benchmarks/previews.py [--models demo,cpu] [--prompts 12] [-n 2] [--repeat 3]
    python benchmarks/previews.py --distance [--models demo,sdxl,flux] [--steps 16]

``--distance`` measures what the previews show instead, in this process: after 25 % and 50 % of the
steps, the mean absolute difference (0-255) from the preview (the ~96 px JPEG a worker sends) to the
final image, drawing the scheduler's clean estimate x0 (what the workers draw) against the noisy sample
x_t (what they drew before); the preview against the preview of the final latents (the linear map's
own error left out: on the random-weight pipelines, whose VAE draws nothing, the one that means
something); and a full VAE decode of each. x_t and x0 come from the same denoising run, so the
baseline is measured alongside. ``sdxl``, ``flux`` (any of ``nbdist.tiny_families``)
are the tiny random-weight pipelines of those shapes.

``cpu`` is the tiny random pipeline of that size (128 px, ~0.4 s steps; ``--cpu-steps``, default 4, as
the other benchmarks); ``demo`` the shipped demo model (64 px, its own 15 fast steps); any other value is
a model folder or hub id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kernel import Execution, Kernel


@dataclass
class Cell:
    """One measured cell: wall seconds, the workers' median seconds per image, widget messages and bytes."""

    wall: float
    image: float
    worker_cpu: float  # CPU seconds of all workers for the cell
    kernel_cpu: float
    messages: int
    bytes: int


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far (``/proc/PID/stat``)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def run_cell(kernel: Kernel, code: str, workers: list[int]) -> Cell:
    """One cell; with the CPU time its workers and the kernel used, which other work on the machine moves less."""
    before = cpu_seconds(workers), cpu_seconds([kernel.pid])
    ex = kernel.execute(code, timeout=900)
    if ex.error:
        raise RuntimeError(f"{ex.error['ename']}: {ex.error['evalue']}")
    spent = cpu_seconds(workers) - before[0], cpu_seconds([kernel.pid]) - before[1]
    image = kernel.value("sorted(r.seconds for r in res)[len(res) // 2]")  # measured in the worker, per image
    return Cell(ex.wall, image, *spent, *_traffic(ex))


def preview_milliseconds(model: str, repeat: int = 200) -> float:
    """One preview of one image (the linear map and the JPEG), timed here on one thread: what a worker adds."""
    import time

    import torch

    from nbdist.call_settings import default_size
    from nbdist.pipelines import load_pipeline
    from nbdist.preview_choice import parse_preview
    from nbdist.worker.previews import Previews, jpegs

    torch.set_num_threads(1)
    pipe = load_pipeline(model, "float32")
    decode = Previews().decoder(pipe, parse_preview("auto"))
    height, width = default_size(pipe)
    scale = pipe.vae_scale_factor
    latents = torch.randn(1, pipe.unet.config.in_channels, (height or 512) // scale, (width or 512) // scale)
    with torch.inference_mode():
        jpegs(decode(latents))
        start = time.perf_counter()
        for _ in range(repeat):
            jpegs(decode(latents))
    return 1000 * (time.perf_counter() - start) / repeat


def _traffic(ex: Execution) -> tuple[int, int]:
    """Widget update messages and their size (the JSON content plus binary buffers)."""
    updates = [m for m in ex.of_type("comm_msg") if m.content.get("data", {}).get("method") == "update"]
    size = sum(len(json.dumps(m.content)) + sum(len(b) for b in m.buffers) for m in updates)
    return len(updates), size


def model_of(name: str) -> str:
    if name in ("tiny", "cpu"):
        from nbdist.tiny import ensure_tiny_pipeline

        return str(ensure_tiny_pipeline(name))
    from nbdist.pipelines import resolve_model

    return resolve_model(name)  # demo: the shipped demo model's folder


def measure(kernel: Kernel, model: str, prompts: int, n: int, repeat: int, steps: int | None) -> dict[str, object]:
    """Interleaved off/auto cells on warm workers; the previews one run makes, counted by ``on_preview``."""
    lines = "\n".join(f"benchmark prompt number {i}" for i in range(prompts))
    flags = f"-n {n} --seed 0" + (f" --steps {steps}" if steps else "")
    cells = {mode: f"%%distgen --model {model} {flags} --preview {mode} -o res\n{lines}" for mode in ("off", "auto")}
    kernel.execute(cells["off"], timeout=900)  # imports, load, fork: not measured
    workers = kernel.value("[w.pid for w in res.workers.values()]")
    runs: dict[str, list[Cell]] = {"off": [], "auto": []}
    for turn in range(repeat):
        for mode in ("off", "auto") if turn % 2 == 0 else ("auto", "off"):  # ABBA: a drift hits both alike
            runs[mode].append(run_cell(kernel, cells[mode], workers))
    prompt_list = [f"benchmark prompt number {i}" for i in range(prompts)]
    count = kernel.value(
        f"(lambda made: (nbdist.generate({model!r}, {prompt_list!r}, seed=0, num_processes={n}, steps={steps!r}, "
        "on_preview=lambda i, s, im: made.append(s)), len(made))[1])([])"
    )
    return {"runs": runs, "previews": count, "ms": preview_milliseconds(model)}


def _medians(cells: list[Cell], prompts: int) -> dict[str, float]:
    """Per image where it applies: wall and worker seconds, CPU of workers and kernel, widget traffic."""
    return {
        "wall": statistics.median(c.wall for c in cells),
        "image": statistics.median(c.image for c in cells),
        "worker": statistics.median(c.worker_cpu for c in cells) / prompts,
        "kernel": statistics.median(c.kernel_cpu for c in cells) / prompts,
        "messages": statistics.median(c.messages for c in cells) / prompts,
        "kib": statistics.median(c.bytes for c in cells) / prompts / 1024,
    }


def table(name: str, found: dict[str, object], prompts: int) -> list[str]:
    runs: dict[str, list[Cell]] = found["runs"]  # type: ignore[assignment]
    off = _medians(runs["off"], prompts)
    per_image, ms = int(found["previews"]) / prompts, float(found["ms"])  # type: ignore[call-overload, arg-type]
    rows = []
    for mode in ("off", "auto"):
        got = _medians(runs[mode], prompts)
        versus = " / ".join(f"{100 * (got[k] / off[k] - 1):+.1f} %" for k in ("wall", "image", "worker"))
        made = f"{per_image:.1f} × {ms:.2f} ms = {100 * per_image * ms / 1000 / off['image']:.1f} %"
        cells = [name, f"--preview {mode}", f"{got['wall']:.2f}", f"{got['image']:.3f}", f"{got['worker']:.3f}"]
        cells += [f"{1000 * got['kernel']:.0f}", versus if mode == "auto" else "–", made if mode == "auto" else "–"]
        cells += [f"{got['messages']:.1f}", f"{got['kib']:.1f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


PROMPTS = (  # the demo model's kind of captions (nbdist.demo.data); the tiny random pipelines take any
    "a red circle on a blue background",
    "a yellow square on a black background",
    "a large green triangle on a white background",
    "a small purple circle on the left on a orange background",
)


def distance_model(name: str) -> str:
    """``demo``, ``cpu``/``tiny``, a family of ``nbdist.tiny_families`` (its tiny pipeline), or a model as given."""
    from nbdist.tiny_families import FAMILIES, ensure_family

    return str(ensure_family(name)) if name in FAMILIES else model_of(name)


def preview_distances(model: str, steps: int) -> dict[tuple[int, str, str], float]:
    """(step, "x_t" or "x0", kind) -> mean absolute difference (0-255), over ``PROMPTS``; kinds in ``_distances``."""
    from nbdist.call_settings import resolve_call
    from nbdist.jobs import make_jobs
    from nbdist.options import GenerateOptions
    from nbdist.pipelines import load_pipeline
    from nbdist.worker.generation import run_batch

    pipe = load_pipeline(model, "float32")
    pipe.set_progress_bar_config(disable=True)
    call = resolve_call(pipe, model, GenerateOptions(steps=steps))
    marks = (max(1, steps // 4), max(1, steps // 2), steps)
    sums: dict[tuple[int, str, str], float] = {}
    for seed, prompt in enumerate(PROMPTS):
        jobs = make_jobs([prompt], 1, seed, {})
        recorder = _recorder_class()(pipe, jobs, call, marks)
        final = run_batch(pipe, jobs, call, preview=recorder)[0].image
        for key, value in _distances(recorder, final, steps).items():
            sums[key] = sums.get(key, 0.0) + value / len(PROMPTS)
    return sums


def _recorder_class() -> type:
    """A ``PreviewHook`` that keeps x_t and x0 at the marked steps (imported late: the kernel benchmark needs none).

    It is handed to ``run_batch`` as the workers' hook is, so the x0 it keeps is what a worker draws.
    """
    from nbdist.worker.previews import PreviewHook, Previews

    class Recorder(PreviewHook):
        def __init__(self, pipe: object, jobs: list, call: object, marks: tuple[int, ...]) -> None:
            real = Previews().hook(pipe, 0, jobs, call, lambda message: None)
            super().__init__(real._decode, real._send, real._indices, real._size, pipe)
            self.marks, self.kept = marks, {}

        def __call__(self, done: int, total: int, latents: object) -> None:
            if done in self.marks:
                flat = self._unpacked(latents.float().clone())
                self.kept[done] = {"x_t": flat, "x0": self._unpacked(self._clean.latest().clone())}

        def _unpacked(self, latents: object) -> object:
            if latents.ndim == 3:  # Flux's packed tokens
                return self._pipe._unpack_latents(latents, *self._size, self._pipe.vae_scale_factor)
            return latents

    return Recorder


def _distances(recorder: object, final: object, steps: int) -> dict[tuple[int, str, str], float]:
    """Per marked step and latents: the preview to the final image ("preview"), the preview to the preview of
    the final latents ("map": the linear map's own error left out; what a random-weight VAE leaves to measure),
    and a full VAE decode to the final image ("vae")."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from nbdist.worker.previews import jpegs

    decode, vae = recorder._decode, recorder._pipe.vae
    target = final.convert("RGB")
    with torch.inference_mode():
        last = decode(recorder.kept[steps]["x_t"])
        found = {}
        for (done, source), latents in ((k, v) for d, pair in recorder.kept.items() for k, v in _keyed(d, pair)):
            shown = Image.open(io.BytesIO(jpegs(decode(latents))[0])).convert("RGB")
            near = np.abs(np.asarray(shown, dtype=float) - np.asarray(target.resize(shown.size), dtype=float))
            found[(done, source, "preview")] = float(near.mean())
            found[(done, source, "map")] = float((decode(latents) - last).abs().mean() * 255)
            raw = latents / vae.config.scaling_factor + float(getattr(vae.config, "shift_factor", None) or 0.0)
            pixels = ((vae.decode(raw.to(vae.dtype)).sample[0].float() + 1) / 2).clamp(0, 1)
            decoded = (pixels * 255).round().permute(1, 2, 0).numpy()
            found[(done, source, "vae")] = float(np.abs(decoded - np.asarray(target, dtype=float)).mean())
    return found


def _keyed(done: int, pair: dict) -> list[tuple[tuple[int, str], object]]:
    return [((done, source), latents) for source, latents in pair.items()]


def step_costs(repeat: int = 200) -> list[str]:
    """What watching the scheduler adds per step (the wrapper) and per preview (x0), in microseconds, one thread.

    Latents of a 1024 px image: SDXL's (1, 4, 128, 128) with Euler and DPM-Solver++, Flux's packed
    (1, 4096, 64) with flow matching. The step alone is the baseline, timed in the same loop.
    """
    import time

    import torch
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    from nbdist.worker.clean_estimate import CleanEstimate

    torch.set_num_threads(1)
    cases = [
        (EulerDiscreteScheduler(), (1, 4, 128, 128)),
        (DPMSolverMultistepScheduler(), (1, 4, 128, 128)),
        (FlowMatchEulerDiscreteScheduler(), (1, 4096, 64)),
    ]
    rows = []
    for scheduler, shape in cases:
        sample, output = torch.randn(shape), torch.randn(shape)
        spent: dict[object, list[float]] = {False: [], True: [], "x0": []}
        for turn in range(6):  # alternating, the fastest of each: a loaded machine's noise left out
            watched = turn % 2 == 1
            scheduler.set_timesteps(repeat + 1)
            estimate = CleanEstimate()
            with estimate.watching(scheduler) if watched else contextlib.nullcontext():
                start = time.perf_counter()
                for t in scheduler.timesteps[:repeat]:
                    scheduler.is_scale_input_called = True  # as a pipeline's scale_model_input sets it
                    scheduler.step(output, t, sample, return_dict=False)
                spent[watched].append((time.perf_counter() - start) / repeat)
                start = time.perf_counter()
                for _ in range(20):
                    estimate.latest()
                spent["x0"].append((time.perf_counter() - start) / 20) if watched else None
        best = {key: 1e6 * min(values) for key, values in spent.items()}
        name, shape_text = type(scheduler).__name__, "×".join(map(str, shape))
        cells = [name, shape_text, f"{best[False]:.0f}", f"{best[True] - best[False]:+.0f}", f"{best['x0']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return ["| scheduler | latents | step µs | + wrapper µs/step | x0 µs/preview |", "|---|---|---|---|---|", *rows]


def distance_table(names: list[str], steps: int) -> list[str]:
    lines = [
        f"{steps} steps, mean over {len(PROMPTS)} prompts (seeds 0-{len(PROMPTS) - 1}), float32 on the CPU; "
        "mean absolute difference, 0-255; x_t: the noisy sample (before), x0: the clean estimate (now)",
        "",
        "| model | after step | preview to final image: x_t | x0 | x0 / x_t "
        "| preview to preview of final latents: x_t | x0 | VAE decode to final image: x_t | x0 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        found = preview_distances(distance_model(name), steps)
        for done in sorted({key[0] for key in found} - {steps}):
            got = {(source, kind): value for (step, source, kind), value in found.items() if step == done}
            ratio = got[("x0", "preview")] / got[("x_t", "preview")]
            cells = [name, f"{done} of {steps}"]
            cells += [f"{got[('x_t', 'preview')]:.1f}", f"{got[('x0', 'preview')]:.1f}", f"{ratio:.2f}"]
            cells += [f"{got[(source, kind)]:.1f}" for kind in ("map", "vae") for source in ("x_t", "x0")]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,cpu")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu-steps", type=int, default=4, help="steps for the tiny pipelines (demo: its own 15)")
    parser.add_argument("--distance", action="store_true", help="how far previews are from the final image")
    parser.add_argument("--steps", type=int, default=16, help="--distance: steps of every model")
    args = parser.parse_args(argv)
    if args.distance:
        models = args.models if args.models != "demo,cpu" else "demo,sdxl,flux"
        print("\n".join([*distance_table(models.split(","), args.steps), "", *step_costs()]), flush=True)
        return
    lines = [
        f"{args.prompts} images, -n {args.n}, median of {args.repeat} interleaved warm cells (live gallery)",
        "",
        "| model | cell | wall s | worker s/image | worker CPU s/image | kernel CPU ms/image "
        "| vs off (wall / s per image / worker CPU) | previews/image × ms each = share of an image "
        "| widget updates/image | widget KiB/image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with Kernel() as kernel:
        assert kernel.execute("%load_ext nbdist\nimport nbdist").error is None
        for name in args.models.split(","):
            steps = args.cpu_steps if name in ("tiny", "cpu") else None
            found = measure(kernel, model_of(name), args.prompts, args.n, args.repeat, steps)
            lines += table(name + (f" ({steps} steps)" if steps else ""), found, args.prompts)
            kernel.execute("%distgen --shutdown")
            print("\n".join(lines), flush=True)
            lines = []


if __name__ == "__main__":
    main()
