"""Live previews (``--preview``): made in the workers, handed to ``on_preview``, drawn in the gallery's tiles.

The kernel test runs the demo model in real forked workers: its previews must become its shapes (the
last one close to the final image, far from another prompt's), come at least every 4 steps, and reach
the browser as tile updates that the finished image then replaces.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nbdist.errors import NbdistUsageError
from nbdist.preview_choice import PreviewChoice, parse_preview

PROMPTS = ["a red circle on a blue background", "a yellow square on a black background"]

RECORD = """
import nbdist, numpy as np
calls = []
def keep(index, step, image):
    calls.append((index, step, image.size, np.asarray(image.convert('RGB').resize((64, 64)), dtype=float) / 255))
res = nbdist.generate('demo', {prompts!r}, seed=0, num_processes=2, on_preview=keep)
finals = [np.asarray(im.convert('RGB').resize((64, 64)), dtype=float) / 255 for im in res.images]
last = {{}}
for index, step, size, pixels in calls:
    last[index] = pixels
steps = {{i: [s for j, s, _, _ in calls if j == i] for i in range(len(finals))}}
close = [float(np.abs(last[i] - finals[i]).mean()) for i in range(len(finals))]
apart = float(np.abs(finals[0] - finals[1]).mean())
print(repr({{'steps': steps, 'sizes': sorted({{c[2] for c in calls}}), 'close': close, 'apart': apart}}))
"""


def test_previews_reach_on_preview_and_the_gallery_tiles(kernel) -> None:
    ex = kernel.execute(RECORD.format(prompts=PROMPTS))
    assert ex.error is None, ex.error
    seen = eval(ex.stream("stdout").strip().splitlines()[-1])  # a dict of plain numbers, printed by the kernel
    for index in range(len(PROMPTS)):
        steps = seen["steps"][index]
        assert steps == sorted(steps) and steps[-1] == 15  # the demo model's 15 steps; the last one too
        gaps = [b - a for a, b in zip([0, *steps], steps, strict=False)]
        assert max(gaps) <= 4 and len(steps) >= 4  # at least every 4 steps
    assert seen["sizes"] == [(96, 96)]
    # The shapes are there: the last preview is far closer to its image than two prompts' images are.
    assert max(seen["close"]) < 0.5 * seen["apart"], seen

    # In the live gallery: tile updates carry previews (JPEG) while the images form, then the final image.
    # 60 steps: each image forms over about a second, several gallery ticks (0.2 s apart)
    ex = kernel.execute(f"%%distgen --model demo -n 2 --steps 60 --seed 0 -o res\n{PROMPTS[0]}\n{PROMPTS[1]}\n")
    assert ex.error is None, ex.error
    sent = [_binary(m.content["data"], m.buffers) for m in ex.of_type("comm_msg") if m.buffers]
    previews = [b["preview"] for b in sent if b.get("preview")]
    finals = [b for b in sent if b.get("thumbnail")]
    assert previews and all(p[:2] == b"\xff\xd8" and Image.open(io.BytesIO(p)).size == (96, 96) for p in previews)
    assert len(finals) == 2 and all(b.get("preview", b"") == b"" for b in finals)  # the preview dropped with it

    ex = kernel.execute(
        "n = []\nnbdist.generate('demo', ['a red circle on a blue background'], seed=0, num_processes=2, "
        "preview='off', on_preview=lambda *a: n.append(a))\nprint(len(n))"
    )
    assert ex.error is None, ex.error
    assert ex.stream("stdout").strip().splitlines()[-1] == "0"


def _binary(data: dict, buffers: list[bytes]) -> dict[str, bytes]:
    """The binary traits of one widget update: buffer_paths name the trait each buffer belongs to."""
    return {path[0]: bytes(buffer) for path, buffer in zip(data.get("buffer_paths", []), buffers, strict=True)}


def test_preview_option_is_checked_before_anything_starts(tmp_path: Path) -> None:
    assert parse_preview(None) == PreviewChoice("auto")
    assert parse_preview("off") == PreviewChoice("off")
    assert parse_preview("taesd=madebyollin/taesd") == PreviewChoice("taesd", "madebyollin/taesd")
    assert parse_preview(f"taesd={tmp_path}") == PreviewChoice("taesd", str(tmp_path))
    for bad in ("fast", "auto=x", "taesd=", f"taesd={tmp_path / 'missing'}"):
        with pytest.raises(NbdistUsageError, match="--preview"):
            parse_preview(bad)


def test_a_vae_without_published_factors_gets_a_fitted_map_cached_on_disk(
    tiny_pipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from nbdist.worker import previews

    monkeypatch.setenv("NBDIST_CACHE", str(tmp_path))
    fitted = previews.linear_map(tiny_pipe.vae)
    files = list((tmp_path / "previews").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["bias"] == list(fitted.bias)
    assert len(fitted.weights) == tiny_pipe.vae.config.latent_channels
    assert previews.linear_map(tiny_pipe.vae) == fitted  # read back, not fitted again
    rgb = fitted.rgb(torch.zeros(2, tiny_pipe.vae.config.latent_channels, 4, 6))
    assert rgb.shape == (2, 3, 4, 6) and 0 <= float(rgb.min()) <= float(rgb.max()) <= 1


def test_published_factors_for_known_latents() -> None:
    from types import SimpleNamespace

    from nbdist.worker.previews import KNOWN_FACTORS, LinearMap, linear_map

    sdxl = SimpleNamespace(
        config=SimpleNamespace(latent_channels=4, scaling_factor=0.13025, block_out_channels=[128, 256, 512, 512])
    )
    assert linear_map(sdxl) == LinearMap(*KNOWN_FACTORS[(4, 0.13025)])
    for (channels, _), (weights, bias) in KNOWN_FACTORS.items():
        assert len(weights) == channels and all(len(row) == 3 for row in weights) and len(bias) == 3


def test_taesd_previews_from_a_local_folder(tiny_model: str, tmp_path: Path) -> None:
    from diffusers import AutoencoderTiny

    import nbdist

    tiny = AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )
    tiny.save_pretrained(tmp_path / "taesd")
    calls: list[tuple[int, int]] = []
    result = nbdist.generate(
        tiny_model,
        ["a dog", "a cat"],
        steps=4,
        seed=0,
        num_processes=2,
        preview=f"taesd={tmp_path / 'taesd'}",
        on_preview=lambda index, step, image: calls.append((index, step)),
    )
    assert result.complete
    assert {index for index, _ in calls} == {0, 1}
    assert all(1 <= step <= 4 for _, step in calls) and (0, 4) in calls and (1, 4) in calls


def test_a_preview_shows_in_its_tile_until_the_image_replaces_it() -> None:
    from nbdist.jobs import make_jobs
    from nbdist.messages import ImageReady, StepPreview
    from nbdist.notebook.gallery_state import GalleryState
    from nbdist.options import GenerateOptions
    from nbdist.parent.results.observer import RunInfo
    from nbdist.worker.outbox import thumbnail_jpeg

    run = RunInfo(make_jobs(["a dog", "a cat"], 1, 0), GenerateOptions(steps=8, seed=0), "m", 0, 1, "cpu", 64, 64)
    state = GalleryState(run)
    jpeg = thumbnail_jpeg(Image.new("RGB", (96, 96), "blue"), 96)
    state.apply(StepPreview(1, 0, 4, 8, jpeg))
    tile = state.tiles[1]
    assert (tile.status, tile.step, tile.preview, tile.thumbnail) == ("running", 4, jpeg, b"")
    assert [t.index for t in state.take_dirty()] == [1]
    final = Image.new("RGB", (64, 64), "red")
    state.apply(ImageReady(1, 0, "cpu", 0.1, "RGB", final.size, final.tobytes(), thumbnail_jpeg(final, 256)))
    state.apply(StepPreview(1, 0, 8, 8, jpeg))  # a late preview never hides the finished image
    assert tile.status == "done" and tile.preview == b"" and tile.thumbnail[:2] == b"\xff\xd8"


def test_taesd_without_a_path_needs_a_published_family(tiny_model: str) -> None:
    import nbdist

    with pytest.raises(NbdistUsageError, match="no published TAESD"):
        nbdist.generate(tiny_model, ["a dog"], steps=1, num_processes=1, preview="taesd", on_preview=print)


def test_a_failing_preview_turns_previews_off_and_never_fails_the_image(capsys) -> None:
    """Flux's previews unpack its packed latents by the image size; with none known (the kernel held no
    pipeline) that raised in the first preview and failed every image. Now: one line, previews off for
    the run, the image made as a plain call makes it. Real tiny Flux, real worker code."""
    import numpy as np
    import torch

    from nbdist.call_settings import resolve_call
    from nbdist.jobs import make_jobs
    from nbdist.options import GenerateOptions
    from nbdist.pipelines import load_pipeline
    from nbdist.tiny_families import ensure_family
    from nbdist.worker.generation import run_batch
    from nbdist.worker.previews import Previews

    pipe = load_pipeline(str(ensure_family("flux")), "float32")
    pipe.set_progress_bar_config(disable=True)
    call = resolve_call(None, None, GenerateOptions(steps=4))  # no size known at all: the worst case
    previews, sent = Previews(), []
    jobs = make_jobs(["a fox"], 1, 0, {})
    hook = previews.hook(pipe, 0, jobs, call, sent.append)
    assert hook is not None
    hook._size = (None, None)  # what the kernel sent before; the hook's own fallback (the pipeline's size) undone
    made = run_batch(pipe, jobs, call, preview=hook)
    plain = pipe("a fox", num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert made[0].image is not None and np.array_equal(np.asarray(made[0].image), np.asarray(plain))
    assert sent == [] and previews.hook(pipe, 0, jobs, call, sent.append) is None  # off for the rest of the run
    lines = [line for line in capsys.readouterr().err.splitlines() if "previews off" in line]
    assert len(lines) == 1 and "TypeError" in lines[0], lines
    # A run with its size unknown but a pipeline at hand draws its previews (the workers' own size).
    hook = Previews().hook(pipe, 0, jobs, call, sent.append)
    assert hook is not None and run_batch(pipe, jobs, call, preview=hook)[0].image is not None
    assert sent and {message.step for message in sent} >= {4}


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd"])
def test_previews_draw_the_clean_estimate_which_is_nearer_the_end(family: str) -> None:
    """Issue 31, item 2: previews drew the noisy sample x_t, coloured static on SDXL (sigma ~14.6) and noise
    on Flux until late. Now they draw the scheduler's x0 (Euler's ``pred_original_sample`` on the SDXL
    shape, x_t - sigma * v for flow matching on the Flux shape, the variance-preserving formula for SD 1.x's
    PNDM, whose step gives none). The same run_batch twice with the same
    seed: with the worker's hook, and with the same hook handed over as a plain function, which does not
    watch the scheduler (x_t, as before). After 4 of 8 steps the x0 preview is nearer the last preview
    (these random-weight VAEs draw nothing to compare with). The images are the same: watching changes none."""
    pipe, call, jobs = _pipeline(family, steps=8)  # a preview every 4 steps: after 4 and 8
    x0, image = _previews(pipe, call, jobs, watch=True)
    x_t, same = _previews(pipe, call, jobs, watch=False)
    assert np.array_equal(np.asarray(image), np.asarray(same))
    assert "step" not in vars(pipe.scheduler)  # the wrapper went with the call: the class's step again
    assert np.abs(x0[4] - x_t[8]).mean() < np.abs(x_t[4] - x_t[8]).mean()


def test_demo_previews_after_a_quarter_of_the_steps_meet_the_issue_target() -> None:
    """Issue 31, item 2, on the demo model (DPM-Solver++, v-prediction): after 4 of 16 steps the preview
    of x_t was 61.3 (0-255, mean absolute difference) from the final image for this prompt and seed (so
    this test failed before); the target is 0.6 of that. x0 here is DPM-Solver++'s converted output."""
    pipe, call, jobs = _pipeline("demo")
    shown, image = _previews(pipe, call, jobs, watch=True)
    final = np.asarray(image.convert("RGB").resize((96, 96)), dtype=float)
    assert np.abs(shown[4] - final).mean() <= 0.6 * 61.3


def _pipeline(family: str, steps: int = 16) -> tuple:
    """A real pipeline (the demo model, or a tiny family's at 32 px), its call of ``steps`` and one job."""
    from nbdist import demo_model
    from nbdist.call_settings import resolve_call
    from nbdist.jobs import make_jobs
    from nbdist.options import GenerateOptions
    from nbdist.pipelines import load_pipeline
    from nbdist.tiny_families import ensure_family

    model = str(demo_model() if family == "demo" else ensure_family(family))
    pipe = load_pipeline(model, "float32")
    pipe.set_progress_bar_config(disable=True)
    size = {} if family == "demo" else {"height": 32, "width": 32}
    call = resolve_call(pipe, model, GenerateOptions(steps=steps, **size))
    return pipe, call, make_jobs(["a red circle on a blue background"], 1, 0, {})


def _previews(pipe: object, call: object, jobs: list, watch: bool) -> tuple[dict[int, np.ndarray], Image.Image]:
    """The previews by step and the image of one run_batch; ``watch`` False hands the hook over as a plain function."""
    from nbdist.worker.generation import run_batch
    from nbdist.worker.previews import Previews

    shown: dict[int, np.ndarray] = {}
    hook = Previews().hook(pipe, 0, jobs, call, lambda message: shown.setdefault(message.step, _pixels(message.jpeg)))
    made = run_batch(pipe, jobs, call, preview=hook if watch else lambda *step: hook(*step))
    return shown, made[0].image


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=float)


@pytest.mark.parametrize("family", ["lcm", "sdxl-turbo"])
def test_watching_the_scheduler_keeps_the_pipelines_noise(family: str) -> None:
    """Pipelines pass ``generator`` (and ``eta``) only to a step whose signature names them: a wrapper with a
    bare ``*args, **kwargs`` signature made LCM and Euler Ancestral draw other noise (37/255 from plain
    diffusers on the tiny LCM, found by test_families). The wrapped call equals the plain one exactly."""
    import numpy as np
    import torch

    from nbdist.pipelines import load_pipeline
    from nbdist.tiny_families import ensure_family
    from nbdist.worker.clean_estimate import CleanEstimate

    pipe = load_pipeline(str(ensure_family(family)), "float32")
    pipe.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}
    plain = pipe("a red fox", generator=torch.Generator("cpu").manual_seed(3), **call).images[0]
    with CleanEstimate().watching(pipe.scheduler):
        watched = pipe("a red fox", generator=torch.Generator("cpu").manual_seed(3), **call).images[0]
    assert np.abs(plain - watched).max() == 0
