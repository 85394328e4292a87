"""Refine (``--init``, ``res[i].refine``): the pipeline's img2img form in the warm workers, equal to plain diffusers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from demo_calls import demo_pipe, plain_call
from kernel import assert_usage_error
from PIL import Image

from nbdist.options import GenerateOptions, NbdistUsageError
from nbdist.parent.planning.init_images import lookup_init, resolve_init

PROMPTS = ["a red circle on a blue background", "a yellow square on a black background"]


def _plain_img2img(init: Image.Image, prompt: str, seed: int, strength: float) -> np.ndarray:
    """``AutoPipelineForImage2Image.from_pipe(pipe)(prompt, image=init, strength=s, generator=...)`` on the demo."""
    import torch
    from diffusers import AutoPipelineForImage2Image

    pipe = AutoPipelineForImage2Image.from_pipe(demo_pipe())
    generator = torch.Generator("cpu").manual_seed(seed)
    return plain_call(pipe, prompt, image=init, strength=strength, generator=generator)


def test_refine_runs_on_the_warm_workers_and_equals_plain_diffusers(kernel, tmp_path: Path) -> None:
    ex = kernel.execute(f"%%distgen --model demo -n 2 --seed 3 -o res\n{PROMPTS[0]}\n{PROMPTS[1]}\n")
    assert ex.error is None, ex.error
    green = "a green circle on a blue background"
    ex = kernel.execute(
        "pids = sorted(w.pid for w in res.workers.values())\n"
        f"ref = res[0].refine(prompt={green!r}, strength=0.5)\n"
        f"res[0].image.save({str(tmp_path / 'init.png')!r}); ref[0].image.save({str(tmp_path / 'ref.png')!r})\n"
        "print(repr((pids == sorted(w.pid for w in ref.workers.values()), ref[0].seed, ref[0].cell)))"
    )
    assert ex.error is None, ex.error
    same_pids, seed, cell = eval(ex.stream("stdout").strip().splitlines()[-1])
    assert same_pids and seed == 3 and "--strength 0.5\n" in cell and cell.endswith(green)
    made = np.asarray(Image.open(tmp_path / "ref.png").convert("RGB"), dtype=float)
    plain = _plain_img2img(Image.open(tmp_path / "init.png").convert("RGB"), green, 3, 0.5)
    assert np.abs(made - plain).max() <= 2, np.abs(made - plain).max()

    # The magic: one init per prompt (a list in the namespace), and a hires-fix pass at twice the size.
    ex = kernel.execute(
        f"inits = [res[1], res[0]]\n%distgen --model demo --init inits --strength 0.3 --seed 0 -o two "
        f'-p "{PROMPTS[0]}" -p "{PROMPTS[1]}"'
    )
    assert ex.error is None, ex.error
    ex = kernel.execute(f"%%distgen --model demo --init res[0] --upscale 2 --strength 0.3 -o big\n{PROMPTS[0]}\n")
    assert ex.error is None, ex.error
    assert kernel.value("(len(two), big[0].image.size, sorted(w.pid for w in big.workers.values()) == pids)") == (
        2,
        (128, 128),
        True,
    )
    assert_usage_error(kernel.execute(f"%%distgen --model demo --init nothing[2]\n{PROMPTS[0]}\n"), "--init nothing[2]")


def test_init_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 64), "red")
    paths = resolve_init(None, 2, GenerateOptions(init=[image, str(_saved(image, tmp_path))])).init
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)
    assert lookup_init("shots[1]", {"shots": ["a", image]}) is image
    for options, message in [
        (GenerateOptions(strength=0.5), "give it with --init"),
        (GenerateOptions(init=image, strength=1.5), "--strength"),
        (GenerateOptions(init=[image] * 3), "one per prompt"),
        (GenerateOptions(init=str(tmp_path / "none.png")), "no such file"),
        (GenerateOptions(init=image, variation_seed=1), "--variation-seed"),
    ]:
        with pytest.raises(NbdistUsageError, match=message):
            resolve_init(None, 2, options)
    with pytest.raises(NbdistUsageError, match="NAME"):
        lookup_init("__import__('os')", {})


def _saved(image: Image.Image, folder: Path) -> Path:
    path = folder / "init.png"
    image.save(path)
    return path
