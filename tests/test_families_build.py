"""The tiny family pipelines of ``nbdist.tiny_families`` load as their real classes and draw an image.

Why: nbdist's family tests (defaults, ``--param``, ``--scheduler``, size rules) rely on these folders
behaving like downloaded checkpoints. If a diffusers upgrade changes a constructor or a default, this
file says which family broke before the slower end-to-end tests do.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from nbdist.tiny_families import FAMILIES, ensure_family

# family: (pipeline class, default output size (width, height), VAE scale factor)
EXPECTED = {
    "sd": ("StableDiffusionPipeline", (32, 32), 2),
    "sdxl": ("StableDiffusionXLPipeline", (32, 32), 2),
    "sdxl-turbo": ("StableDiffusionXLPipeline", (32, 32), 2),
    "sd3": ("StableDiffusion3Pipeline", (32, 32), 8),
    "flux": ("FluxPipeline", (128, 128), 1),  # Flux's default side is hard-coded: 128 * vae_scale_factor
    "pixart-sigma": ("PixArtSigmaPipeline", (32, 32), 1),  # denoised at 256×256 (binning), resized back
    "sana": ("SanaPipeline", (1024, 1024), 32),  # signature default 1024; denoised at the 512 bin
    "lcm": ("LatentConsistencyModelPipeline", (32, 32), 2),
}


def test_every_family_has_an_expectation():
    assert set(EXPECTED) == set(FAMILIES)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The test machines are shared: one core each, which is what the timings reported for the families assume."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(name):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(ensure_family(name))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", FAMILIES)
def test_family_loads_and_draws_at_its_default_size(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from a hub
    cls, size, scale = EXPECTED[name]
    pipe = _load(name)
    assert type(pipe).__name__ == cls
    assert pipe.vae_scale_factor == scale
    if name in ("sd", "lcm"):
        assert pipe.safety_checker is None

    image = pipe("a red fox in the snow", num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0))
    image = image.images[0]
    assert image.size == size
    pixels = np.asarray(image, dtype=np.float32)
    assert np.isfinite(pixels).all()
    assert pixels.max() > 0 and pixels.std() > 1, "a black or flat image"


@pytest.mark.parametrize("name", ["sd", "sd3", "flux", "pixart-sigma", "sana"])
def test_explicit_small_size(name):
    """A 64×64 request gives 64×64 (PixArt and Sana resize back from their bin)."""
    pipe = _load(name)
    out = pipe("a fox", height=64, width=64, num_inference_steps=1, generator=torch.Generator("cpu").manual_seed(0))
    assert out.images[0].size == (64, 64)


def test_turbo_carries_its_recommended_settings():
    folder = ensure_family("sdxl-turbo")
    assert json.loads((folder / "nbdist.json").read_text()) == {"steps": 2, "guidance": 0.0}
    assert not (ensure_family("sdxl") / "nbdist.json").exists()


def test_a_stale_build_is_replaced(tmp_path):
    """A folder written by an older BUILD_VERSION (other configs) is rebuilt, not reused."""
    from nbdist.tiny_families import BUILD_VERSION

    folder = ensure_family("lcm", tmp_path / "lcm")
    marker = folder / ".tiny-family-version"
    assert int(marker.read_text()) == BUILD_VERSION
    marker.write_text("0\n")
    (folder / "leftover").write_text("from the old build")
    assert ensure_family("lcm", folder) == folder
    assert int(marker.read_text()) == BUILD_VERSION
    assert not (folder / "leftover").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lcm"]  # no temporary folders left behind


def test_class_defaults_are_the_real_ones():
    """The defaults nbdist will read from ``__call__`` (the issue quotes them per family)."""
    from diffusers import FluxPipeline, LatentConsistencyModelPipeline, StableDiffusion3Pipeline

    def defaults(cls):
        params = inspect.signature(cls.__call__).parameters
        return params["num_inference_steps"].default, params["guidance_scale"].default

    assert defaults(StableDiffusion3Pipeline) == (28, 7.0)
    assert defaults(FluxPipeline) == (28, 3.5)
    assert defaults(LatentConsistencyModelPipeline) == (4, 8.5)
    assert "negative_prompt" not in inspect.signature(LatentConsistencyModelPipeline.__call__).parameters


def test_tokenizers_survive_the_round_trip():
    """Tokenizers built offline save and load back identically (T5, Gemma and CLIP)."""
    for name, attr in [("sd3", "tokenizer_3"), ("sana", "tokenizer"), ("sdxl", "tokenizer_2")]:
        from nbdist.tiny_families import build_family

        built = getattr(build_family(name), attr)
        loaded = getattr(_load(name), attr)
        text = "A painting of a squirrel eating a burger, 2 ü"
        assert type(loaded) is type(built)
        assert loaded(text).input_ids == built(text).input_ids
