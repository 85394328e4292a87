"""Sweeps through a real kernel: the product of jobs, shared seeds, per-image values, labelled grids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kernel import Kernel, assert_usage_error
from PIL import Image

from nbdist.jobs import make_jobs
from nbdist.options import NbdistUsageError
from nbdist.sweep import parse_sweep

CHECK = """
import numpy as np, torch
torch.set_num_threads(1)  # reference calls in the kernel: no OpenMP spin-waiting against other load
from nbdist.pipelines import load_pipeline
ref = load_pipeline({model!r}, "float32")
ref.set_progress_bar_config(disable=True)
def worst(res):
    out = 0.0
    for r in res:
        g = torch.Generator("cpu").manual_seed(r.seed)
        kw = dict(num_inference_steps=r.params.get("steps", 2), guidance_scale=r.params.get("guidance", 7.5))
        img = ref(r.prompt, generator=g, **kw).images[0]
        out = max(out, float(np.abs(np.asarray(img, dtype=float) - np.asarray(r.image, dtype=float)).max()))
    return out
"""


def test_sweep_grid_through_the_magic(kernel: Kernel, tiny_model: str, tmp_path: Path) -> None:
    ex = kernel.execute(
        f"%%distgen --model {tiny_model} -n 2 --seed 7 -o res --save-dir out "
        "--sweep guidance=3,5,7.5 --sweep steps=2,3\na red fox\na blue car"
    )
    assert ex.error is None, ex.error
    assert kernel.value("(len(res.images), len(res.errors))") == (12, 0)
    # Each image carries its values; seeds are shared across the axes (prompt j: seed 7 + j).
    params = kernel.value("[(r.prompt, r.seed, r.params) for r in res]")
    assert [p[2] for p in params[:6]] == [{"guidance": g, "steps": s} for s in (2, 3) for g in (3.0, 5.0, 7.5)]
    assert {p[1] for p in params if p[0] == "a red fox"} == {7} and {p[1] for p in params if p[0] == "a blue car"} == {
        8
    }
    assert kernel.execute(CHECK.format(model=tiny_model)).error is None
    assert kernel.value("worst(res)") <= 2, "an image differs from its plain diffusers call"
    # Labelled grids in the static copy, grid PNGs and per-image values on disk.
    html = kernel.value("res._repr_html_()")
    for label in ("guidance=3", "guidance=5", "guidance=7.5", "steps=2", "steps=3", "a red fox"):
        assert label in html, label
    assert html.count('<table class="nbdist-grid"') == 2
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("grid*.png")) == ["grid-steps-2.png", "grid-steps-3.png"]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    first = min(lines, key=lambda m: m["index"])
    assert first["sweep"] == {"guidance": "3", "steps": "2"} and first["guidance"] == 3.0 and first["steps"] == 2
    with Image.open(out / first["file"]) as img:
        assert json.loads(img.text["nbdist"])["sweep"] == first["sweep"]
    assert kernel.value("res.grid().size")[0] > 3 * 64


def test_seed_range_and_bad_axes(kernel: Kernel, tiny_model: str) -> None:
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 1 -o res --sweep seed=3..6\na fox")
    assert ex.error is None, ex.error
    assert kernel.value("[r.seed for r in res]") == [3, 4, 5, 6]
    for flags, message in (
        ("--sweep colour=1,2", "has no such call argument"),
        ("--sweep steps=0,2", "positive integer"),
        ("--sweep size=64x65", "not a multiple"),
        ("--sweep size=64", "WIDTHxHEIGHT"),
        ("--sweep seed=5..1", "runs backwards"),
        ("--sweep scheduler=Nope", "choose one of"),
        ("--sweep a=1 --sweep b=2 --sweep c=3 --sweep d=4", "at most 3 axes"),
    ):
        assert_usage_error(kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 1 {flags}\na"), message)


def test_sweep_jobs_unit() -> None:
    axes = parse_sweep(["guidance=3,5", "size=64x32,32x64"])
    assert axes == {"guidance": [3.0, 5.0], "size": [(64, 32), (32, 64)]}
    jobs = make_jobs(["a", "b"], 2, 10, axes)
    assert len(jobs) == 2 * 2 * 4 and [j.index for j in jobs] == list(range(16))
    assert {j.seed for j in jobs if j.prompt == "b" and j.k == 1} == {13}  # seed + j*K + k, whatever the axes
    with pytest.raises(NbdistUsageError):
        parse_sweep(["guidance=x"])


def test_sweep_from_the_cli(tiny_model: str, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nbdist", "generate", "--model", tiny_model, "--prompts", str(prompts)]
    cmd += ["--out", str(out), "-n", "2", "--steps", "1", "--seed", "0", "--sweep", "guidance=1,9"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["guidance"] for m in manifest) == [1.0, 9.0] and (out / "grid.png").is_file()
