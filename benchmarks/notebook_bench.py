"""Scenario (d): ``%%distgen`` in a real Jupyter kernel, driven over its protocol (jupyter_client).

Times are what a notebook front-end sees: a cell's wall time runs from the execute request to the
kernel going idle, and time to first image is the arrival of the first gallery image update (a widget
``comm_msg`` carrying the JPEG). Peak memory is the PSS of the kernel and all its children, sampled
while the cell runs. Cells, in one kernel:

- cold: ``%load_ext nbdist`` then the first ``%%distgen`` (imports and model load included);
- warm: the same cell again (the pipeline is cached in the kernel and inherited by the forked workers);
- levers (unless ``quick``): ``--schedule dynamic``, ``-b 2``, ``-n 1``, 2 threads per worker,
  mixed image sizes static vs dynamic;
- plain loop in the kernel (one process, the same cached pipeline): the in-kernel baseline.
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import GUIDANCE, SEED, PssSampler, benchmark_prompts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kernel import Execution, Kernel

__all__ = ["CellResult", "run_notebook_scenarios"]


@dataclass
class CellResult:
    """One measured cell."""

    name: str
    wall: float
    first_image: float | None
    images: int
    peak_pss: int
    max_diff: int | None = None  # against the warm cell's images (equal jobs only)
    note: str = ""
    latency: float | None = None  # median seconds per image reported by the workers


def _check(ex: Execution) -> Execution:
    if ex.error:
        raise RuntimeError(f"cell failed: {ex.error['ename']}: {ex.error['evalue']}\n{ex.code[:300]}")
    return ex


class _Session:
    def __init__(self, kernel: Kernel, sampler: PssSampler) -> None:
        self.k = kernel
        self.sampler = sampler

    def cell(self, code: str, timeout: float = 900) -> tuple[Execution, int]:
        self.sampler.reset()
        ex = _check(self.k.execute(code, timeout=timeout))
        return ex, self.sampler.peak

    def quiet(self, code: str) -> Any:
        return self.k.value(code) if code else None


def _image_updates(ex: Execution) -> list[Any]:
    """Gallery updates that carry image bytes: widget ``update`` messages with a binary buffer.

    Only images travel as buffers (progress and captions are plain JSON state), whatever the trait
    is called, so this does not depend on the gallery's internals.
    """
    return [m for m in ex.of_type("comm_msg") if m.buffers and m.content.get("data", {}).get("method") == "update"]


def _distgen(flags: str, prompts: list[str]) -> str:
    return f"%%distgen {flags}\n" + "\n".join(prompts)


def run_notebook_scenarios(
    model: str,
    prompts_count: int,
    steps: int,
    num_processes: int,
    device: str,
    out_dir: Path,
    levers: bool,
    default_side: int,
    repeat: int = 1,
) -> list[CellResult]:
    """Run the cells above in one fresh kernel; save the warm cell's images to ``out_dir``."""
    prompts = benchmark_prompts(prompts_count)
    dev = f" --device {device}"
    dtype = "float16" if device == "cuda" else "float32"
    base = f"--model {model} --steps {steps} --seed {SEED} --guidance {GUIDANCE}{dev}"
    results: list[CellResult] = []
    bench_dir = Path(__file__).resolve().parent
    with Kernel(cwd=str(out_dir)) as kernel, PssSampler(kernel.pid) as sampler:
        s = _Session(kernel, sampler)
        load, _ = s.cell("%load_ext nbdist")
        cold, peak = s.cell(_distgen(f"{base} -n {num_processes} -o res", prompts))
        first = _image_updates(cold)
        results.append(
            CellResult(
                "cold",
                load.wall + cold.wall,
                load.wall + first[0].at if first else None,
                len(first),
                peak,
                note=f"%load_ext {load.wall:.2f} s + first cell {cold.wall:.2f} s",
            )
        )

        def warm(
            name: str,
            flags: str,
            cell_prompts: list[str] = prompts,
            compare: bool = True,
            note: str = "",
            times: int = 1,
        ) -> None:
            """Run a warm cell ``times`` times and keep the run with the median wall time."""
            runs = []
            for _ in range(times):
                ex, peak = s.cell(_distgen(f"{flags} -o _r", cell_prompts))
                updates = _image_updates(ex)
                latency = s.quiet("statistics.median(r.seconds for r in _r.records if r.seconds is not None)")
                inside = s.quiet("_r.seconds")
                runs.append((ex.wall, updates[0].at if updates else None, len(updates), peak, latency, inside))
            diff = None
            if compare:
                diff = s.quiet(
                    "max(int(abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()) "
                    "for a, b in zip(_r.images, res.images, strict=True))"
                )
            wall, first, count, _, latency, inside = sorted(runs)[len(runs) // 2]
            peak = max(r[3] for r in runs)
            note = (note + "; " if note else "") + f"generate() {inside:.2f} s of it"
            if times > 1:
                note += f"; median of {times}: " + ", ".join(f"{r[0]:.2f}" for r in runs)
            results.append(CellResult(name, wall, first, count, peak, diff, note, latency))

        _check(kernel.execute("import statistics\nimport numpy as np"))
        warm("warm", f"{base} -n {num_processes}", note="same cell again", times=repeat)
        _check(
            kernel.execute(
                f"import pathlib; _d = pathlib.Path({str(out_dir)!r}) / 'd'; _d.mkdir(exist_ok=True)\n"
                "for _rec in res: _rec.image.save(_d / f'{_rec.index:04d}.png')"
            )
        )
        if levers:
            warm("warm --schedule dynamic", f"{base} -n {num_processes} --schedule dynamic", times=repeat)
            warm("warm -b 2", f"{base} -n {num_processes} -b 2", note="2 images per forward pass")
            warm("warm -n 1", f"{base} -n 1", note="one worker, all cores' threads")
            if device != "cuda":
                _check(kernel.execute("import os; os.environ['NBDIST_THREADS_PER_WORKER'] = '2'"))
                warm(
                    f"warm -n {num_processes}, 2 threads each",
                    f"{base} -n {num_processes}",
                    note="oversubscribed: torch's default threads in every worker",
                )
                _check(kernel.execute("del os.environ['NBDIST_THREADS_PER_WORKER']"))
            big = (default_side * 3 // 2) // 32 * 32
            half = len(prompts) // 2
            mixed = [f"{p} [{big}x{big}]" for p in prompts[:half]] + prompts[half:]
            _check(
                kernel.execute(
                    textwrap.dedent(
                        f"""\
                        import sys; sys.path.insert(0, {str(bench_dir)!r})
                        from mixed_sizes import MixedSizePipeline
                        from nbdist.pipelines import cached_pipeline
                        mixed = MixedSizePipeline(**cached_pipeline({model!r}, {dtype!r}).components)
                        """
                    )
                )
            )
            mixed_base = base.replace(f"--model {model}", "--pipe mixed")
            for schedule in ("static", "dynamic"):
                warm(
                    f"mixed sizes, --schedule {schedule}",
                    f"{mixed_base} -n {num_processes} --schedule {schedule}",
                    mixed,
                    compare=False,
                    note=f"first {half} prompts at {big}px, the rest at {default_side}px",
                )
        # The in-kernel plain loop last: on a GPU it initialises CUDA in the kernel.
        loop = textwrap.dedent(
            f"""\
            import torch
            from nbdist.pipelines import cached_pipeline
            _pipe = cached_pipeline({model!r}, {dtype!r})
            _pipe = _pipe.to("cuda") if {device!r} == "cuda" else _pipe
            _pipe.set_progress_bar_config(disable=True)
            _loop = []
            for _i, _p in enumerate({prompts!r}):
                _g = torch.Generator("cpu").manual_seed({SEED} + _i)
                _loop.append(_pipe(_p, num_inference_steps={steps}, guidance_scale={GUIDANCE}, generator=_g).images[0])
                print(_i, flush=True)
            """
        )
        loops = []
        for _ in range(repeat):
            ex, peak = s.cell(loop)
            streams = ex.of_type("stream")
            loops.append((ex.wall, streams[0].at if streams else None, peak))
        diff = s.quiet(
            "max(int(abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()) "
            "for a, b in zip(_loop, res.images, strict=True))"
        )
        threads = s.quiet("torch.get_num_threads()")
        wall, first, _ = sorted(loops)[len(loops) // 2]
        note = f"one process, {threads} torch threads"
        if repeat > 1:
            note += f"; median of {repeat}: " + ", ".join(f"{w:.2f}" for w, _, _ in loops)
        results.append(
            CellResult(
                "plain loop in the kernel",
                wall,
                first,
                len(prompts),
                max(r[2] for r in loops),
                diff,
                note=note,
                latency=wall / len(prompts),
            )
        )
    (out_dir / "notebook.json").write_text(json.dumps([r.__dict__ for r in results], indent=1), encoding="utf-8")
    return results
