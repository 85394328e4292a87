"""Variations (``--variation-seed``, ``res[i].vary``): the blended noise as diffusers' own ``latents=``.

A variation must equal the plain diffusers call given the slerp of the image's noise and its variation
seed's noise as ``latents=`` (within 2/255), strength 0 must be the original image exactly, and
``vary`` must run on the warm workers that made the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from demo_calls import demo_pipe, plain_call
from PIL import Image

from nbdist.options import GenerateOptions, NbdistUsageError

PROMPTS = ["a red circle on a blue background", "a yellow square on a black background"]


def _plain_variation(prompt: str, seed: int, variation_seed: int, strength: float) -> np.ndarray:
    """The image made by a plain diffusers call from the blended noise (the demo model at its own settings)."""
    import torch

    from nbdist.worker.variations import slerp

    pipe = demo_pipe()
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, pipe.unet.config.in_channels, 64 // pipe.vae_scale_factor, 64 // pipe.vae_scale_factor)
    own = torch.randn(shape, generator=generator)
    other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(variation_seed))
    return plain_call(pipe, prompt, latents=slerp(strength, own, other), generator=generator)


def test_vary_runs_on_the_warm_workers_and_equals_plain_diffusers(kernel, tmp_path: Path) -> None:
    ex = kernel.execute(f"%%distgen --model demo -n 2 --seed 3 -o res\n{PROMPTS[0]}\n{PROMPTS[1]}\n")
    assert ex.error is None, ex.error
    ex = kernel.execute(
        "pids = sorted(w.pid for w in res.workers.values())\n"
        "v = res[1].vary(n=3, strength=0.3, seed=100)\n"
        "same = res[1].vary(n=1, strength=0, seed=5)\n"
        f"v[1].image.save({str(tmp_path / 'v1.png')!r})\n"
        "import numpy as np\n"
        "print(repr((pids == sorted(w.pid for w in v.workers.values()), [r.seed for r in v], "
        "[r.params for r in v], np.array_equal(np.asarray(same[0].image), np.asarray(res[1].image)), v[1].cell)))"
    )
    assert ex.error is None, ex.error
    same_pids, seeds, params, original, cell = eval(ex.stream("stdout").strip().splitlines()[-1])
    assert same_pids and seeds == [4, 4, 4]  # every variation keeps the image's seed (3 + 1)
    assert params == [{"variation_seed": 100}, {"variation_seed": 101}, {"variation_seed": 102}]
    assert original  # strength 0: the original image, exactly
    assert "--seed 4 --variation-seed 101 --variation-strength 0.3" in cell
    made = np.asarray(Image.open(tmp_path / "v1.png").convert("RGB"), dtype=float)
    plain = _plain_variation(PROMPTS[1], 4, 101, 0.3)
    assert np.abs(made - plain).max() <= 2, np.abs(made - plain).max()
    assert np.abs(made - _plain_variation(PROMPTS[1], 4, 101, 0.0)).mean() > 0  # and it is not the original


def test_slerp_keeps_the_ends_and_the_norm() -> None:
    import torch

    from nbdist.worker.variations import slerp

    a = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(0))
    b = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(slerp(0.0, a, b), a)
    assert torch.allclose(slerp(1.0, a, b), b, atol=1e-5)
    assert abs(float(slerp(0.5, a, b).norm() / a.norm()) - 1) < 0.05  # a straight blend would lose ~30 %


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"variation_strength": 0.3}, "needs --variation-seed"),
        ({"variation_seed": 1, "variation_strength": 1.5}, "from 0 to 1"),
        ({"variation_seed": -1}, "non-negative"),
    ],
)
def test_bad_variation_options_are_refused_before_anything_starts(changes: dict, message: str) -> None:
    with pytest.raises(NbdistUsageError, match=message):
        GenerateOptions(**changes).validate()
