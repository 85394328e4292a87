"""Every family through ``%%distgen -n 2`` in a real kernel, against plain diffusers calls.

For each tiny family (``nbdist/tiny_families.py``): images equal the plain call (within 2/255) with
(a) explicit arguments, (b) nothing given (the pipeline's defaults, or the model's ``nbdist.json``),
(c) a ``--param``, (d) a ``--scheduler``; and the recorded effective values and their sources are right.
One kernel serves every family (the warm pool is replaced per model).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel import Kernel, assert_usage_error
from test_faults import stderr_lines

from nbdist.tiny_families import FAMILIES, ensure_family

# A call argument each family takes (beyond steps/guidance/size), and a scheduler it accepts.
PARAMS = {
    "sd": ("guidance_rescale=0.5", {"guidance_rescale": 0.5}),
    "sdxl": ("clip_skip=1", {"clip_skip": 1}),
    "sdxl-turbo": ("guidance_rescale=0.5", {"guidance_rescale": 0.5}),
    "sd3": ("max_sequence_length=32", {"max_sequence_length": 32}),
    "flux": ("true_cfg_scale=2.0", {"true_cfg_scale": 2.0}),
    "pixart-sigma": ("use_resolution_binning=False", {"use_resolution_binning": False}),
    "sana": ("max_sequence_length=32", {"max_sequence_length": 32}),
    "lcm": ("original_inference_steps=20", {"original_inference_steps": 20}),
}
SCHEDULERS = {"sd": "EulerDiscreteScheduler", "sdxl": "DDIMScheduler", "pixart-sigma": "EulerDiscreteScheduler"}

SETUP = """
import numpy as np, torch, diffusers
torch.set_num_threads(1)  # reference calls in the kernel: no OpenMP spin-waiting against other load
from diffusers import DiffusionPipeline
refs = {}
def ref(folder, scheduler=None):
    key = (folder, scheduler)
    if key not in refs:
        pipe = DiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        if scheduler:
            pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
        refs[key] = pipe
    return refs[key]
def worst(res, folder, scheduler=None, **kwargs):
    pipe, out = ref(folder, scheduler), 0.0
    for r in res:
        g = torch.Generator("cpu").manual_seed(r.seed)
        img = pipe(r.prompt, generator=g, **kwargs).images[0]
        out = max(out, float(np.abs(np.asarray(img, dtype=float) - np.asarray(r.image, dtype=float)).max()))
    return out
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with Kernel(cwd=str(tmp_path_factory.mktemp("families"))) as k:
        assert k.execute("%load_ext nbdist").error is None
        assert k.execute(SETUP).error is None
        yield k


def run(kernel: Kernel, folder: Path, flags: str, out: str = "res") -> list[str]:
    ex = kernel.execute(f"%%distgen --model {folder} -n 2 --seed 3 -o {out} {flags}\na red fox\na blue car")
    assert ex.error is None, ex.error
    assert kernel.value(f"(len({out}.images), len({out}.errors))") == (2, 0), ex.stream()
    return [line for line in stderr_lines(ex) if not line.startswith("nbdist: new workers")]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_plain_diffusers(kernel: Kernel, family: str) -> None:
    folder = ensure_family(family)
    f = repr(str(folder))
    # (a) explicit arguments
    run(kernel, folder, "--steps 2 --guidance 3.0 --height 64 --width 64")
    assert kernel.value(f"worst(res, {f}, num_inference_steps=2, guidance_scale=3.0, height=64, width=64)") <= 2
    assert kernel.value("(res.settings['steps'], res.sources['steps'], res[0].image.size)") == (2, "user", (64, 64))
    # (b) nothing given: the class's defaults, or the model's nbdist.json
    run(kernel, folder, "")
    recommended = family == "sdxl-turbo"
    kwargs = "num_inference_steps=2, guidance_scale=0.0" if recommended else ""
    assert kernel.value(f"worst(res, {f}, {kwargs})") <= 2
    steps, guidance = kernel.value(
        f"(lambda p: (p['num_inference_steps'].default, p['guidance_scale'].default))(__import__('inspect').signature("
        f"type(ref({f})).__call__).parameters)"
    )
    defaults = (2, 0.0) if recommended else (steps, guidance)
    source = "model file" if recommended else "class"
    assert kernel.value("(res.settings['steps'], res.settings['guidance'])") == defaults
    assert kernel.value("(res.sources['steps'], res.sources['guidance'])") == (source, source)
    # (c) a --param, passed to every call (with the model's own guidance where its nbdist.json has one)
    flag, params = PARAMS[family]
    if recommended:
        params = {**params, "guidance_scale": 0.0}
    run(kernel, folder, f"--steps 2 --param {flag}")
    assert kernel.value(f"worst(res, {f}, num_inference_steps=2, **{params!r})") <= 2
    # (d) a --scheduler (families whose scheduler has no other compatible one: their own class)
    own = kernel.value(f"type(ref({f}).scheduler).__name__")
    scheduler = SCHEDULERS.get(family, own)
    run(kernel, folder, f"--steps 2 --scheduler {scheduler}")
    extra = ", guidance_scale=0.0" if recommended else ""
    assert kernel.value(f"worst(res, {f}, {scheduler!r}, num_inference_steps=2{extra})") <= 2
    assert kernel.value("res.settings['scheduler']") == scheduler


def test_unused_settings_are_told_and_bad_ones_refused(kernel: Kernel) -> None:
    lcm, flux = ensure_family("lcm"), ensure_family("flux")
    assert run(kernel, lcm, "--steps 2 --negative blurry") == [
        "nbdist: LatentConsistencyModelPipeline takes no negative prompt; --negative is ignored"
    ]
    lines = run(kernel, flux, "--steps 2 --negative blurry")
    assert lines == ["nbdist: FluxPipeline uses a negative prompt only with --param true_cfg_scale=4.0 (> 1)"]
    for flags, message in (
        ("--param guidance_rescal=0.5", "did you mean guidance_rescale"),
        ("--param generator=1", "set by --seed"),
        ("--param 'x=[1'", "not a Python literal"),
        ("--scheduler NoSuchScheduler", "choose one of"),
    ):
        assert_usage_error(kernel.execute(f"%%distgen --model {ensure_family('sd')} -n 2 {flags}\na"), message)


def test_nan_image_is_reported_not_drawn_black(kernel: Kernel) -> None:
    """A VAE whose decode overflows to NaN: the record is an error with the dtype hint, not a black image."""
    ex = kernel.execute(
        f"""
nan_pipe = DiffusionPipeline.from_pretrained({str(ensure_family("sd"))!r})
with torch.no_grad():
    nan_pipe.vae.decoder.conv_out.bias.fill_(float('nan'))
"""
    )
    assert ex.error is None, ex.error
    ex = kernel.execute("%%distgen --pipe nan_pipe -n 2 --steps 2 --seed 0 -o bad\na\nb")
    assert ex.error is None, ex.error
    errors = kernel.value("[r.error for r in bad]")
    assert len(errors) == 2 and all("NaN" in e and "--dtype" in e for e in errors)
    assert kernel.value("bad.images") == []
