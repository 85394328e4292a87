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

``cpu`` is the tiny random pipeline of that size (128 px, ~0.4 s steps; ``--cpu-steps``, default 4, as
the other benchmarks); ``demo`` the shipped demo model (64 px, its own 15 fast steps); any other value is
a model folder or hub id.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,cpu")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu-steps", type=int, default=4, help="steps for the tiny pipelines (demo: its own 15)")
    args = parser.parse_args(argv)
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
