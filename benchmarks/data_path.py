"""The data path of a fast model: images delivered to the kernel, kernel CPU and memory, files, notebook size.

A stand-in for SDXL-Turbo / FLUX.1-schnell on this CPU: ``nbdist.tiny``'s "wide" pipeline, one step,
guidance 1, whose denoising costs almost nothing but whose output is a full 512x512 image, so moving,
encoding, writing, keeping and showing images is all there is. Each scenario runs ``%%distgen -n 2`` in
a fresh Jupyter kernel driven over its protocol (a warm-up cell, then the measured cell):

- ``old, in memory``: the code before the data-path change (``git archive BASELINE``), default flags:
  raw pixels through the queue, every image kept in the kernel;
- ``old, --save-dir``: the same, the kernel encodes and writes each PNG on its writer thread;
- ``new, saved (default)``: workers convert to uint8 on the device, encode and write the PNG themselves,
  the kernel receives a path and a thumbnail;
- ``new, --no-save``: the new code keeping images in memory (the old path's behaviour).

Reported per scenario and image count: images/s delivered (the measured cell's wall time, writing
included) against the workers' own generation rate (from each image's worker-side seconds), the
kernel's CPU ms per image (the kernel process alone), its RSS growth over the cell, PNGs written per
second, and the size of the notebook the cell makes when saved with its widget state (the outputs
plus the last state of every widget model with its binary buffers, base64, as JupyterLab and
``nbconvert --execute`` store it). Usage::

    python benchmarks/data_path.py --counts 500 5000 --out benchmarks/RESULTS-data-path.md
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from kernel import Execution, Kernel  # noqa: E402

BASELINE = "d83515f"  # the last commit before images moved to disk
CELL = "%%distgen --model {model} -n 2 --steps 1 --guidance 1 --seed {seed} {flags} -o res\n{prompts}"


@dataclass(frozen=True)
class Scenario:
    name: str
    tree: str  # "new" or "old"
    flags: str  # "{dir}" is replaced by a fresh folder


SCENARIOS = (
    Scenario("old, in memory", "old", ""),
    Scenario("old, --save-dir", "old", "--save-dir {dir}"),
    Scenario("new, saved (default)", "new", ""),
    Scenario("new, --no-save", "new", "--no-save"),
)


@dataclass
class Row:
    scenario: str
    count: int
    wall: float
    delivered: float
    generated: float
    kernel_ms: float
    rss_mb: float
    pngs_per_s: float | None
    notebook_mb: float
    outputs_mb: float


def old_tree(work: Path) -> Path:
    """The baseline's code, unpacked from git (nothing else is touched)."""
    tree = work / "nbdist-old"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def kernel_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of the kernel process alone (its workers excluded)."""
    import psutil

    proc = psutil.Process(pid)
    cpu = proc.cpu_times()
    return cpu.user + cpu.system, proc.memory_info().rss


def notebook_size(ex: Execution) -> tuple[int, int]:
    """Bytes of the saved cell: (outputs + widget state, outputs alone)."""
    outputs = [
        {"output_type": m.msg_type, **{k: v for k, v in m.content.items() if k != "transient"}}
        for m in ex.messages
        if m.msg_type in ("display_data", "execute_result", "stream", "update_display_data")
    ]
    state: dict[str, dict[str, Any]] = {}
    for m in ex.messages:
        if m.msg_type not in ("comm_open", "comm_msg"):
            continue
        data = m.content.get("data") or {}
        if m.msg_type == "comm_msg" and data.get("method") != "update":
            continue  # custom messages (thumbnails past the cap, full images) are never saved
        model = state.setdefault(m.content["comm_id"], {})
        model.update(data.get("state") or {})
        for path, buf in zip(data.get("buffer_paths") or [], m.buffers, strict=False):
            model[".".join(map(str, path))] = base64.b64encode(bytes(buf)).decode("ascii")
    out_bytes = len(json.dumps(outputs))
    return out_bytes + len(json.dumps(state)), out_bytes


def run_scenario(sc: Scenario, count: int, model: str, trees: dict[str, Path], work: Path) -> Row:
    env = {**os.environ, "PYTHONPATH": str(trees[sc.tree]), "NBDIST_SAVE_DIR": str(work / "runs")}
    folder = work / f"{sc.tree}-{count}-{sc.flags.split(' ')[0].strip('-') or 'default'}"
    flags = sc.flags.format(dir=folder)
    with Kernel(cwd=str(work), env=env) as k:
        assert k.execute("%load_ext nbdist").error is None
        warm = k.execute(
            CELL.format(model=model, seed=0, flags="--no-save" if sc.tree == "new" else "", prompts="a\nb")
        )
        assert warm.error is None, warm.error
        k.execute("import gc; gc.collect()")
        cpu0, rss0 = kernel_usage(k.pid)
        prompts = "\n".join(f"image {i}" for i in range(count))
        ex = k.execute(CELL.format(model=model, seed=1, flags=flags, prompts=prompts), timeout=3600)
        assert ex.error is None, ex.error
        cpu1, rss1 = kernel_usage(k.pid)
        assert k.value("len(res.records)") == count
        per_rank = k.value(
            "{r: (sum(1 for x in res if x.rank == r), sum(x.seconds for x in res if x.rank == r)) "
            "for r in {x.rank for x in res}}"
        )
    generated = sum(n / s for n, s in per_rank.values())
    saved = not sc.flags.startswith("--no-save") and (sc.tree == "new" or "--save-dir" in sc.flags)
    total, outputs = notebook_size(ex)
    return Row(
        sc.name,
        count,
        ex.wall,
        count / ex.wall,
        generated,
        1000 * (cpu1 - cpu0) / count,
        (rss1 - rss0) / 2**20,
        count / ex.wall if saved else None,
        total / 2**20,
        outputs / 2**20,
    )


def png_levels() -> str:
    """Encoding one 512x512 image of the wide pipeline at zlib levels 1 and 6 (this process, median of 5)."""
    import io
    import statistics

    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    smooth = image.resize((32, 32)).resize((512, 512), Image.BILINEAR)
    lines = ["| image | zlib level | ms / image | KB |", "|---|---|---|---|"]
    for label, im in (("smooth (decoded-latent-like)", smooth), ("noise (worst case)", image)):
        for level in (1, 6):
            times, size = [], 0
            for _ in range(5):
                buf = io.BytesIO()
                t = time.perf_counter()
                im.save(buf, format="PNG", compress_level=level)
                times.append(time.perf_counter() - t)
                size = len(buf.getvalue())
            lines.append(f"| {label} | {level} | {1000 * statistics.median(times):.1f} | {size / 1024:.0f} |")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    head = (
        "| scenario | images | wall s | delivered img/s | generated img/s | delivered / generated | kernel CPU ms/img "
        "| kernel RSS growth MB | PNGs/s | notebook MB (with widget state) | notebook MB (outputs only) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        pngs = f"{r.pngs_per_s:.1f}" if r.pngs_per_s is not None else "–"
        lines.append(
            f"| {r.scenario} | {r.count} | {r.wall:.1f} | {r.delivered:.2f} | {r.generated:.2f} | "
            f"{r.delivered / r.generated:.2f} | {r.kernel_ms:.2f} | {r.rss_mb:.0f} | {pngs} | "
            f"{r.notebook_mb:.1f} | {r.outputs_mb:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500])
    parser.add_argument("--scenarios", nargs="+", default=[s.name for s in SCENARIOS], help="names, quoted")
    parser.add_argument("--big-only", nargs="*", default=["new, saved (default)"], help="scenarios run past 500")
    parser.add_argument("--out", type=Path, help="append the tables to this Markdown file")
    args = parser.parse_args()
    from nbdist.tiny import ensure_tiny_pipeline

    model = str(ensure_tiny_pipeline("wide"))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="nbdist-data-path-") as tmp:
        work = Path(tmp)
        trees = {"new": REPO, "old": old_tree(work)}
        load = os.getloadavg()
        for count in args.counts:
            for sc in SCENARIOS:
                if sc.name in args.scenarios and (count <= 500 or sc.name in args.big_only):
                    rows.append(run_scenario(sc, count, model, trees, work))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        after = os.getloadavg()
    text = (
        f"\n## Data path (`benchmarks/data_path.py`, baseline {BASELINE})\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average before {load[0]:.2f}, after {after[0]:.2f}. Pipeline: nbdist.tiny 'wide' "
        "(512x512, 1 step, guidance 1), `-n 2`.\n\n"
        + table(rows)
        + "\n\nPNG encoding of one 512x512 image:\n\n"
        + png_levels()
        + "\n"
    )
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
