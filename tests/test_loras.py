"""LoRAs by flag through a real kernel: swapped in the same warm workers, equal to plain diffusers, swept.

The LoRAs are made offline with peft on the tiny pipeline (``lora_files.py``); the reference images come
from a plain ``StableDiffusionPipeline`` in the kernel with the same adapters and scales (one torch thread).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kernel import Kernel, assert_usage_error
from lora_files import make_lora
from test_faults import stderr_lines
from test_pool import pids

from nbdist.jobs import make_jobs
from nbdist.loras import active_loras, check_lora_sweep, parse_lora, parse_loras
from nbdist.options import NbdistUsageError
from nbdist.sweep import parse_sweep

REFERENCE = """
import numpy as np, torch
torch.set_num_threads(1)  # reference calls in the kernel: no OpenMP spin-waiting against other load
from diffusers import StableDiffusionPipeline
ref = StableDiffusionPipeline.from_pretrained({model!r})
ref.set_progress_bar_config(disable=True)
ref.load_lora_weights({a!r}, adapter_name="a")
ref.load_lora_weights({b!r}, adapter_name="b")
def worst(res, names, scales):
    out = 0.0
    for r in res:
        if names:
            ref.enable_lora()
            ref.set_adapters(names, adapter_weights=scales)
        else:
            ref.disable_lora()
        g = torch.Generator("cpu").manual_seed(r.seed)
        img = ref(r.prompt, num_inference_steps=2, guidance_scale=7.5, generator=g).images[0]
        out = max(out, float(np.abs(np.asarray(img, dtype=float) - np.asarray(r.image, dtype=float)).max()))
    return out
"""
CELL = "%%distgen --model {model} -n 2 --steps 2 --seed 0 -o {out} {flags}\na red fox\na blue car"


@pytest.fixture(scope="module")
def loras(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return make_lora(tiny_model, folder / "alpha", seed=1), make_lora(tiny_model, folder / "beta", seed=2)


def test_lora_swapped_in_warm_workers(kernel: Kernel, tiny_model: str, loras: tuple[Path, Path], tmp_path: Path):
    a, b = loras
    from nbdist.demo import demo_model

    other = make_lora(str(demo_model()), tmp_path / "for-demo")  # made for another UNet: other widths
    ex = kernel.execute(CELL.format(model=tiny_model, out="x", flags=f"--lora {other}"))
    assert_usage_error(ex, f"--lora {other} does not match {tiny_model}: unet")
    assert_usage_error(kernel.execute(CELL.format(model=tiny_model, out="x", flags="--lora nope.safetensors")), "nope")
    ex = kernel.execute(CELL.format(model=tiny_model, out="r1", flags=f"--lora {a}:0.8"))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    first = pids(kernel)
    assert len(first) == 2
    # Another scale, another LoRA, two at once, none: the same worker processes every time.
    cells = {"r2": f"--lora {a}:0.4", "r3": f"--lora {b}", "r4": f"--lora {a}:0.3 --lora {b}:0.6", "r5": ""}
    for out, flags in cells.items():
        ex = kernel.execute(CELL.format(model=tiny_model, out=out, flags=flags))
        assert ex.error is None and stderr_lines(ex) == [], (flags, ex.stream())
        assert pids(kernel) == first, f"{flags}: the workers were replaced"
    assert kernel.execute(REFERENCE.format(model=tiny_model, a=str(a), b=str(b))).error is None
    cases = {"r1": (["a"], [0.8]), "r2": (["a"], [0.4]), "r3": (["b"], [1.0]), "r4": (["a", "b"], [0.3, 0.6])}
    for out, (names, scales) in cases.items():
        assert kernel.value(f"worst({out}, {names!r}, {scales!r})") <= 2, out
    assert kernel.value("worst(r5, [], [])") <= 2
    assert kernel.value("r1[0].image.tobytes() != r5[0].image.tobytes()"), "the LoRA changed nothing"
    # Fused for speed, then unfused by the next change: still the same workers and the same images.
    for out, flags in {"f1": f"--lora {a}:0.8 --fuse-lora", "f2": f"--lora {b}"}.items():
        ex = kernel.execute(CELL.format(model=tiny_model, out=out, flags=flags))
        assert ex.error is None and stderr_lines(ex) == [] and pids(kernel) == first, (flags, ex.stream())
    assert kernel.value("worst(f1, ['a'], [0.8])") <= 2 and kernel.value("worst(f2, ['b'], [1.0])") <= 2


def test_lora_sweeps(kernel: Kernel, tiny_model: str, loras: tuple[Path, Path]) -> None:
    a, b = loras
    ex = kernel.execute(CELL.format(model=tiny_model, out="s", flags=f"--lora {a} --sweep lora=0,0.4,0.8"))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert kernel.value("[r.params['lora'] for r in s]") == [0.0, 0.4, 0.8] * 2
    assert kernel.value("len({r.seed for r in s if r.prompt == 'a red fox'})") == 1  # seeds shared along the row
    html = kernel.value("s._repr_html_()")
    assert all(label in html for label in ("lora=0", "lora=0.4", "lora=0.8"))
    ex = kernel.execute(CELL.format(model=tiny_model, out="n", flags=f"--sweep lora=none,{a},{b}:0.5"))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert kernel.value("n._repr_html_().count('lora=alpha')") >= 1
    assert kernel.execute(REFERENCE.format(model=tiny_model, a=str(a), b=str(b))).error is None
    for scale in (0.0, 0.4, 0.8):
        assert kernel.value(f"worst([r for r in s if r.params['lora'] == {scale}], ['a'], [{scale}])") <= 2, scale
    assert kernel.value("worst([r for r in n if r.params['lora'] == 'none'], [], [])") <= 2
    assert kernel.value(f"worst([r for r in n if r.params['lora'] == {str(a)!r}], ['a'], [1.0])") <= 2
    assert kernel.value(f"worst([r for r in n if r.params['lora'] == '{b}:0.5'], ['b'], [0.5])") <= 2


def test_lora_parsing_unit(tmp_path: Path) -> None:
    assert parse_lora("a.safetensors:0.8") == ("a.safetensors", 0.8)
    assert parse_lora("owner/repo") == ("owner/repo", 1.0)
    assert parse_loras(["x:0.5", "y"]) == {"x": 0.5, "y": 1.0} and parse_loras({"x": 1}) == {"x": 1.0}
    with pytest.raises(NbdistUsageError, match="given twice"):
        parse_loras(["x", "x:0.3"])
    axes = parse_sweep(["lora:alpha=0,0.5", "guidance=3"])
    loras = {"/m/alpha.safetensors": 0.8, "/m/beta": 1.0}
    assert check_lora_sweep(loras, axes) == list(loras)
    job = make_jobs(["p"], 1, 0, axes)[1]
    assert active_loras(loras, job.settings) == {"/m/alpha.safetensors": 0.5, "/m/beta": 1.0}
    assert active_loras(loras, {"lora": "none"}) == {} and active_loras(loras, {"lora": "/m/beta:0.2"}) == {
        "/m/beta": 0.2
    }
    with pytest.raises(NbdistUsageError, match="exactly one --lora"):
        check_lora_sweep(loras, parse_sweep(["lora=0,1"]))
    with pytest.raises(NbdistUsageError, match="no --lora with that name"):
        check_lora_sweep(loras, parse_sweep(["lora:gamma=0,1"]))


def test_demo_lora_turns_shapes_red(kernel: Kernel) -> None:
    """The shipped demo LoRA, swept 0 → 1 on the demo model: the asked colour, then red (judged from pixels)."""
    from nbdist.demo import demo_lora, demo_model

    prompts = "a blue circle on a green background\na yellow square on a blue background"
    ex = kernel.execute(
        f"%%distgen --model {demo_model()} -n 2 --seed 0 -o d --lora {demo_lora()} --sweep lora=0,1\n{prompts}"
    )
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    seen = kernel.value(
        "[(r.prompt.split()[1], r.params['lora'], __import__('nbdist.demo.evaluate', "
        "fromlist=['judge']).judge(r.image).colour) for r in d]"
    )
    for asked, scale, colour in seen:
        assert colour == (asked if scale == 0 else "red"), (asked, scale, colour)
