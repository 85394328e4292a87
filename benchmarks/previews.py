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
    messages: int
    bytes: int


def run_cell(kernel: Kernel, code: str) -> Cell:
    ex = kernel.execute(code, timeout=900)
    if ex.error:
        raise RuntimeError(f"{ex.error['ename']}: {ex.error['evalue']}")
    image = kernel.value("sorted(r.seconds for r in res)[len(res) // 2]")  # measured in the worker, per image
    return Cell(ex.wall, image, *_traffic(ex))


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
    run_cell(kernel, cells["off"])  # imports, load, fork: not measured
    runs: dict[str, list[Cell]] = {"off": [], "auto": []}
    for turn in range(repeat):
        for mode in ("off", "auto") if turn % 2 == 0 else ("auto", "off"):  # ABBA: a drift hits both alike
            runs[mode].append(run_cell(kernel, cells[mode]))
    prompt_list = [f"benchmark prompt number {i}" for i in range(prompts)]
    count = kernel.value(
        f"(lambda made: (nbdist.generate({model!r}, {prompt_list!r}, seed=0, num_processes={n}, steps={steps!r}, "
        "on_preview=lambda i, s, im: made.append(s)), len(made))[1])([])"
    )
    return {"runs": runs, "previews": count, "ms": preview_milliseconds(model)}


def table(name: str, found: dict[str, object], prompts: int) -> list[str]:
    runs: dict[str, list[Cell]] = found["runs"]  # type: ignore[assignment]
    off = statistics.median(c.wall for c in runs["off"])
    off_image = statistics.median(c.image for c in runs["off"])
    per_image = int(found["previews"]) / prompts  # type: ignore[call-overload]
    rows = []
    for mode in ("off", "auto"):
        wall, image = statistics.median(c.wall for c in runs[mode]), statistics.median(c.image for c in runs[mode])
        messages = statistics.median(c.messages for c in runs[mode]) / prompts
        size = statistics.median(c.bytes for c in runs[mode]) / prompts / 1024
        versus = f"{100 * (wall / off - 1):+.1f} % / {100 * (image / off_image - 1):+.1f} %" if mode == "auto" else "–"
        cost = per_image * float(found["ms"]) / 1000 / off_image  # type: ignore[arg-type]
        made = f"{per_image:.1f} × {float(found['ms']):.2f} ms = {100 * cost:.1f} %" if mode == "auto" else "–"  # type: ignore[arg-type]
        cells = [
            name,
            f"--preview {mode}",
            f"{wall:.2f}",
            f"{image:.3f}",
            versus,
            made,
            f"{messages:.1f}",
            f"{size:.1f}",
        ]
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
        "| model | cell | wall s | worker s/image | vs off (wall / image) | previews/image × ms each = share "
        "of an image | widget updates/image | widget KiB/image |",
        "|---|---|---|---|---|---|---|---|",
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
