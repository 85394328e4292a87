"""The warm pool on CUDA with a real-architecture model: what a notebook user pays per cell on a GPU.

Why a separate benchmark: every other one runs tiny models on CPU cores, where moving the weights,
starting CUDA in a worker and the first kernels' warm-up cost nothing. On a GPU those are what a fresh
fork per cell costs and what the warm pool saves, so they can only be measured there, with a model of
realistic size. No hub is reachable from a lent GPU machine, so the model is built offline: a Stable
Diffusion 1.5-shaped pipeline (the real diffusers/transformers classes at SD1.5's configuration,
~1.07 B parameters) with random weights, saved once in fp16 with ``save_pretrained`` and loaded back
the way a downloaded checkpoint is. Random weights cost exactly what trained ones do.

Measured in one process, like a notebook kernel (it never initialises CUDA; the workers do):

- cold call: the first ``nbdist.generate`` (loads the pipeline into the process's cache, forks);
- fresh fork per cell (``nbdist.shutdown()`` first; the baseline) against the warm pool (the same call
  again on the workers of the call before): wall time as the caller sees it and time to first image;
- images/s at 1..N workers (N = visible GPUs), speed-up and efficiency against one worker;
- Stop keeps the workers: a background run cancelled after its first image; the worker pids before
  and after, how long the cancel took, and whether the next run reuses them at warm speed;
- a plain diffusers loop in a separate process, same images and seeds: one image's latency and the
  images/s nbdist should match with one worker, and the largest pixel difference from nbdist's images.

    python benchmarks/gpu_bench.py [--images 12] [--steps 25] [--size 512] [--report GPU-bench.md]
    python benchmarks/gpu_bench.py --smoke      # CPU, tiny pipeline, 2 images: checks this script

The report (markdown) is rewritten after every measurement, so a run stopped by a timeout still leaves
what it measured; ``--budget-s`` skips the optional parts that would not fit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_prompts, max_abs_diff

SEED = 0

# Stable Diffusion 1.5's published component configurations (unet/, vae/, text_encoder/, scheduler/
# config.json of the checkpoint), written out so the model is built with no hub access.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD15_TEXT: dict[str, Any] = {  # CLIP ViT-L/14's text tower
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def build_sd15_pipeline(seed: int = 0) -> Any:
    """An SD1.5-shaped ``StableDiffusionPipeline`` with seeded random weights, on the CPU in fp32.

    The tokenizer is nbdist's offline byte-level CLIP tokenizer (``nbdist.tiny``): its ids are a
    subset of the 49408-token embedding, so the text encoder keeps SD1.5's size; only the special
    token ids follow that tokenizer (bos 0, eos and pad 1), which the encoder's pooling relies on.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from nbdist.tiny import _tokenizer

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE),
        text_encoder=text,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_sd15_pipeline(path: Path) -> Path:
    """Build the SD1.5-shaped pipeline and ``save_pretrained`` it to ``path`` in fp16, unless there.

    fp16 on disk, as real SD checkpoints ship, halves the bytes the kernel reads and each worker
    copies to its GPU. Written to a sibling temp folder and renamed, so a run killed mid-save never
    leaves a half-written model that a later run would take for complete.
    """
    import torch

    if (path / "model_index.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        pipe = build_sd15_pipeline()
        pipe.to(torch.float16)  # positional: diffusers 0.42 ignores a torch_dtype= keyword here
        if pipe.unet.dtype != torch.float16:
            raise RuntimeError(f"the pipeline stayed in {pipe.unet.dtype}; it must be saved in float16")
        pipe.save_pretrained(tmp, safe_serialization=True)
        del pipe
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def parameter_count(path: Path) -> int:
    """Parameters in the saved safetensors files (headers only: nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for file in path.glob("*/*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = f.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


# ---------------------------------------------------------------------------------------------------
# measurements


class FirstImage:
    """A run observer that notes when the first finished image reaches this process."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_start(self, run: Any) -> None:
        pass

    def on_message(self, msg: Any) -> None:
        from nbdist.messages import ImageReady

        if self.at is None and isinstance(msg, ImageReady):
            self.at = time.monotonic()

    def on_end(self, result: Any) -> None:
        pass


@dataclass
class Cell:
    """One ``nbdist.generate`` call as its caller sees it."""

    wall: float
    first: float | None
    ok: int
    total: int
    pids_before: list[int]
    pids_after: list[int]
    result: Any = field(repr=False, default=None)

    @property
    def reused(self) -> bool:
        """Ran on the workers that were there before the call (no fork)."""
        return bool(self.pids_before) and self.pids_before == self.pids_after


def cell(model: str, prompts: Sequence[str], opts: dict[str, Any]) -> Cell:
    """Time one call from the caller's side: fork (if any), dispatch, every image back."""
    import nbdist

    before = sorted(nbdist.status().pids)
    watch = FirstImage()
    start = time.monotonic()
    result = nbdist.generate(model, list(prompts), observers=[watch], **opts)
    wall = time.monotonic() - start
    first = None if watch.at is None else watch.at - start
    ok = sum(1 for r in result if r.ok)
    return Cell(wall, first, ok, len(prompts), before, sorted(nbdist.status().pids), result)


@dataclass
class StopCheck:
    """A background run cancelled after its first image, and the run after it."""

    cancel_to_over: float
    step: float
    kept: int
    total: int
    interrupted: bool
    pids_before: list[int]
    pids_after: list[int]
    next_cell: Cell


def stop_check(
    model: str, prompts: Sequence[str], opts: dict[str, Any], then: tuple[Sequence[str], dict[str, Any]], timeout: float
) -> StopCheck:
    """Cancel a background run (``RunHandle.cancel``, what the Stop button does) after its first image.

    The workers should drop the image in progress within one denoising step and stay: the same pids
    afterwards, and the next call (``then``: prompts and options of a warm call) as fast as before.
    """
    import nbdist

    before = sorted(nbdist.status().pids)
    watch = FirstImage()
    handle = nbdist.generate(model, list(prompts), observers=[watch], background=True, **opts)
    deadline = time.monotonic() + timeout
    while watch.at is None and not handle.done and time.monotonic() < deadline:
        time.sleep(0.01)
    cancelled = time.monotonic()
    handle.cancel()
    result = handle.wait(timeout=max(1.0, deadline - time.monotonic()))
    over = time.monotonic() - cancelled
    pids = sorted(nbdist.status().pids)
    seconds = [r.seconds for r in result if r.ok and r.seconds]
    step = min(seconds) / opts["steps"] if seconds else float("nan")
    next_cell = cell(model, *then)
    kept = sum(1 for r in result if r.ok)
    return StopCheck(over, step, kept, len(prompts), result.interrupted, before, pids, next_cell)


PLAIN = """
import json, sys, time, torch
from diffusers import StableDiffusionPipeline
a = json.loads(sys.argv[1])
dtype = torch.float16 if a["device"] == "cuda" else torch.float32
t = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(a["model"], dtype=dtype).to(a["device"])
pipe.set_progress_bar_config(disable=True)
load = time.perf_counter() - t
size = {"height": a["size"], "width": a["size"]} if a["size"] else {}
times = []
for i, prompt in enumerate(a["prompts"]):
    t = time.perf_counter()
    image = pipe(prompt, num_inference_steps=a["steps"], generator=torch.Generator("cpu").manual_seed(a["seed"] + i),
                 **size).images[0]
    if a["device"] == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
    image.save(f"{a['out']}/{i:04d}.png")
print(json.dumps({"load": load, "times": times}))
"""


@dataclass
class Plain:
    """The same images from a plain diffusers loop in its own process (one device, batch 1)."""

    load: float
    times: list[float]
    images: list[Any]

    @property
    def latency(self) -> float:
        """One image once warm: the best of all but the first (which pays CUDA's warm-up)."""
        return min(self.times[1:] or self.times)

    @property
    def rate(self) -> float:
        """Images/s over all but the first image."""
        rest = self.times[1:] or self.times
        return len(rest) / sum(rest)


def plain_loop(model: str, prompts: Sequence[str], steps: int, size: int | None, device: str, timeout: float) -> Plain:
    """Run ``PLAIN`` in a fresh interpreter: CUDA must never start in this (the kernel's) process."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="nbdist-plain-") as out:
        args = {"model": model, "prompts": list(prompts), "steps": steps, "size": size, "device": device}
        args.update(seed=SEED, out=out)
        proc = subprocess.run(
            [sys.executable, "-c", PLAIN, json.dumps(args)], capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"plain loop exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        images = [Image.open(p).convert("RGB") for p in sorted(Path(out).glob("*.png"))]
        for image in images:
            image.load()
    return Plain(data["load"], data["times"], images)


# ---------------------------------------------------------------------------------------------------
# the report


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


@dataclass
class Report:
    """Markdown sections, rewritten to ``path`` after each measurement so a killed run leaves a report."""

    path: Path | None
    header: list[str]
    sections: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def set(self, name: str, lines: list[str]) -> None:
        self.sections[name] = lines
        self.write()

    def fail(self, name: str, error: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.failures.append(name)
        self.set(name, [f"### {name}: FAILED", "", "```", tb.strip()[-3000:], "```"])

    def skip(self, name: str, why: str) -> None:
        """A part left out for time is a gap in the report, so it fails the run like an error does."""
        self.skipped.append(name)
        self.set(name, [f"### {name}: NOT RUN ({why})"])

    def text(self) -> str:
        lines = list(self.header)
        for body in self.sections.values():
            lines += ["", *body]
        if self.failures:
            lines += ["", f"**Failed:** {', '.join(self.failures)}"]
        if self.skipped:
            lines += ["", f"**Not run (out of time):** {', '.join(self.skipped)}"]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".part")
            tmp.write_text(self.text(), encoding="utf-8")
            os.replace(tmp, self.path)


def cells_table(rows: list[tuple[str, list[Cell]]], baseline: list[Cell]) -> list[str]:
    """Per-cell cost, medians over repeats, with ratios against the fresh-fork baseline."""
    med = statistics.median
    base_wall = med(c.wall for c in baseline)
    out = [
        "| cell | runs | wall s | first image s | images/s | images ok | workers reused | speed-up vs fresh fork |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, cells in rows:
        wall = med(c.wall for c in cells)
        firsts = [c.first for c in cells if c.first is not None]
        reused = "yes" if all(c.reused for c in cells) else ("no" if not any(c.reused for c in cells) else "some")
        out.append(
            f"| {label} | {len(cells)} | {fmt(wall)} | {fmt(med(firsts) if firsts else None)} | "
            f"{fmt(cells[0].total / wall)} | {sum(c.ok for c in cells)}/{sum(c.total for c in cells)} | {reused} | "
            f"{fmt(base_wall / wall)}× |"
        )
    return out


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny pipeline, 2 images, 2 steps")
    parser.add_argument("--model", help="folder of the SD1.5-shaped model (built there if missing; default: temp)")
    parser.add_argument("--build-only", action="store_true", help="build the model into --model and exit")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2, help="fresh/warm pairs (medians are reported)")
    parser.add_argument("--max-n", type=int, help="largest worker count (default: visible GPUs)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip optional parts past this many seconds")
    parser.add_argument("--report", type=Path, help="markdown report, rewritten as results come in")
    args = parser.parse_args(argv)
    started = time.monotonic()

    if args.build_only:
        if not args.model:
            parser.error("--build-only needs --model DIR")
        path = ensure_sd15_pipeline(Path(args.model))
        print(f"built {path} in {time.monotonic() - started:.1f} s ({parameter_count(path) / 1e9:.2f} B parameters)")
        return 0

    from nbdist.parent.machine.devices import cpu_count, visible_gpu_count

    gpus = visible_gpu_count()
    if args.smoke:
        device, images, steps, size, repeat = "cpu", 2, 2, None, 1
        max_n = args.max_n or min(2, cpu_count())
    else:
        if gpus == 0:
            print("gpu_bench: no CUDA GPU visible (use --smoke on a CPU)", file=sys.stderr)
            return 2
        device, images, steps, size, repeat = "cuda", args.images, args.steps, args.size, args.repeat
        max_n = args.max_n or gpus

    scratch = Path(tempfile.mkdtemp(prefix="nbdist-gpu-bench-"))
    report = Report(args.report, [])
    try:
        t = time.monotonic()
        if args.smoke:
            from nbdist.tiny import ensure_tiny_pipeline

            model_path = ensure_tiny_pipeline("tiny")
            what = "nbdist's tiny random pipeline (smoke run: checks this script, its numbers mean nothing)"
        else:
            model_path = ensure_sd15_pipeline(Path(args.model) if args.model else scratch / "sd15-random")
            what = "SD1.5-shaped StableDiffusionPipeline, random weights, fp16 (UNet 320-640-1280-1280, CLIP-L text)"
        build_s = time.monotonic() - t
        model = str(model_path)
        params = parameter_count(model_path)
        prompts = benchmark_prompts(images)
        opts: dict[str, Any] = {"steps": steps, "seed": SEED, "device": device, "num_processes": max_n}
        if size:
            opts.update(height=size, width=size)
        size_text = f"{size}x{size}" if size else "the model's default size"
        report.header = [
            "## nbdist on a GPU: warm pool, first image, scaling, Stop" if not args.smoke else "## gpu_bench smoke run",
            "",
            f"Model: {what}; {params / 1e6:.0f} M parameters; built or found in {build_s:.1f} s.",
            f"Work: {images} images ({len(prompts)} prompts), {steps} steps, {size_text}, seed {SEED}, "
            f"device {device}, up to {max_n} worker(s); {gpus} GPU(s) visible.",
        ]
        report.write()

        def remaining() -> float:
            return args.budget_s - (time.monotonic() - started)

        def section(name: str, run: Callable[[], list[str]], needs: float = 0.0) -> bool:
            """Run one measurement into the report; a failure is reported and the pool reset."""
            import nbdist

            if remaining() < needs:
                report.skip(name, f"budget: {remaining():.0f} s left, needs ~{needs:.0f} s")
                return False
            try:
                report.set(name, run())
                return True
            except Exception as error:  # reported, and the next part starts from a clean pool
                report.fail(name, error)
                nbdist.shutdown()
                return False

        state: dict[str, Any] = {}

        def cold() -> list[str]:
            c = cell(model, prompts, opts)
            state["cold"] = c
            return [
                "### Cold call",
                "",
                f"First `nbdist.generate` of the process (loads the pipeline into its cache, forks {max_n} worker(s)): "
                f"{fmt(c.wall)} s, first image after {fmt(c.first)} s, {c.ok}/{c.total} images ok.",
            ]

        def fresh_vs_warm() -> list[str]:
            import nbdist

            fresh, warm = [], []
            for _ in range(repeat):
                nbdist.shutdown()
                fresh.append(cell(model, prompts, opts))
                warm.append(cell(model, prompts, opts))
            state["fresh"], state["warm"] = fresh, warm
            return [
                "### Per-cell cost: fresh fork vs warm pool",
                "",
                f"`-n {max_n}`, medians of {repeat}; fresh = `nbdist.shutdown()` then the call (fork, CUDA start and "
                "weights to the GPU in each worker), warm = the same call again on those workers. Baseline: fresh.",
                "",
                *cells_table([("fresh fork per cell", fresh), ("warm pool", warm)], fresh),
            ]

        def scaling() -> list[str]:
            rows = ["| workers | wall s | images/s | speed-up vs 1 | efficiency |", "|---|---|---|---|---|"]
            rates: dict[int, float] = {}
            for n in range(1, max_n + 1):
                o = {**opts, "num_processes": n}
                if n == max_n and "warm" in state:
                    wall = statistics.median(c.wall for c in state["warm"])
                else:
                    cell(model, prompts, o)  # forks n workers; the warm call below is the measurement
                    wall = cell(model, prompts, o).wall
                rates[n] = images / wall
                rows.append(
                    f"| {n} | {fmt(wall)} | {fmt(rates[n])} | {fmt(rates[n] / rates[1])}× | "
                    f"{fmt(rates[n] / rates[1] / n)} |"
                )
            state["rates"] = rates
            return ["### Images/s at 1..N workers (warm, one per GPU)", "", *rows]

        def stop() -> list[str]:
            import nbdist

            warm = cell(model, prompts, opts)  # the pool at -n max_n; also the reference speed
            if not warm.reused:  # the scaling runs left fewer workers: that call forked, time a warm one
                warm = cell(model, prompts, opts)
            long_prompts = benchmark_prompts(images * 3 if not args.smoke else 8)
            stop_opts = {**opts, "steps": steps if not args.smoke else 100}
            s = stop_check(model, long_prompts, stop_opts, (prompts, opts), timeout=max(60.0, 4 * warm.wall))
            nbdist.shutdown()
            kept = s.pids_before == s.pids_after and s.next_cell.reused
            state["stop_ok"] = kept
            return [
                "### Stop keeps the workers",
                "",
                f"A background run of {s.total} images (`background=True`), `RunHandle.cancel()` after its first "
                "image.",
                "",
                "| check | value |",
                "|---|---|",
                f"| cancel → run over | {fmt(s.cancel_to_over)} s (one image's seconds / steps: {fmt(s.step, 3)} s) |",
                f"| images kept / asked | {s.kept}/{s.total} (interrupted: {s.interrupted}) |",
                f"| worker pids before / after | {s.pids_before} / {s.pids_after} |",
                f"| same workers after Stop | {'yes' if s.pids_before == s.pids_after else 'NO'} |",
                f"| next run reuses them | {'yes' if s.next_cell.reused else 'NO'}: {fmt(s.next_cell.wall)} s "
                f"vs {fmt(warm.wall)} s warm ({fmt(s.next_cell.wall / warm.wall)}×) |",
            ]

        def plain() -> list[str]:
            p = plain_loop(model, prompts, steps, size, device, timeout=max(30.0, remaining()))
            lines = [
                "### Plain diffusers loop (separate process, one device, batch 1)",
                "",
                f"Load + `.to({device!r})`: {fmt(p.load)} s; first image {fmt(p.times[0])} s (warm-up included); "
                f"one warm image {fmt(p.latency)} s; {fmt(p.rate)} images/s.",
            ]
            if "warm" in state:
                w = state["warm"]
                first = statistics.median(c.first for c in w if c.first is not None)
                wall = statistics.median(c.wall for c in w)
                rate1 = state.get("rates", {}).get(1)
                lines += [
                    "",
                    "| nbdist against the plain loop | value |",
                    "|---|---|",
                    f"| warm first image − one plain image | {first - p.latency:+.2f} s |",
                    f"| warm -n {max_n} images/s / plain images/s | {fmt(images / wall / p.rate)} |",
                ]
                if rate1 is not None:
                    lines.append(f"| warm -n 1 images/s / plain images/s | {fmt(rate1 / p.rate)} |")
                ok = [r.image for r in w[-1].result if r.ok]
                if len(ok) == len(p.images):
                    diff = max_abs_diff(ok, p.images)
                    lines.append(f"| largest pixel difference, nbdist vs plain (0..255) | {diff} |")
            return lines

        section("cold", cold)
        section("fresh vs warm", fresh_vs_warm)
        per_cell = statistics.median(c.wall for c in state["fresh"]) if "fresh" in state else 30.0
        section("scaling", scaling, needs=2 * per_cell * (max_n - 1))
        section("stop", stop, needs=3 * per_cell)
        section("plain", plain, needs=2 * per_cell)
        report.set("total", [f"Benchmark total: {time.monotonic() - started:.0f} s."])
    except Exception as error:
        report.fail("setup", error)
    finally:
        import nbdist

        nbdist.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print(report.text())
    return 1 if report.failures or report.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
