"""One dtype rule on every path: the notebook, ``--device-map`` and the CLI under a launcher.

Why: the three paths used to decide apart (per family in the notebook, float16 for every family
under ``--device-map`` and ``torchrun``), and Flux or SD3 in float16 decode to black. Each path is
driven here through its real entry (``plan_run``, ``launched._check``) with a stand-in ``nvidia-smi``
on ``PATH`` (``tests/fake_gpus.py``), so the code believes in GPUs with or without bfloat16: a T4
(compute capability 7.5) or an L4 (8.9), an old driver that cannot say, or no nvidia-smi at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_gpus import fake_gpus, path_with

from nbdist.launched import LaunchEnv, _check
from nbdist.options import GenerateOptions
from nbdist.parent.machine.dtypes import default_dtype, family_of
from nbdist.parent.planning.plan import plan_run

# family folder name: (pipeline class, dtype on an 8.9 GPU, dtype on a 7.5 GPU)
FAMILIES = {
    "sd": ("StableDiffusionPipeline", "float16", "float16"),
    "sdxl": ("StableDiffusionXLPipeline", "float16", "float16"),
    "sd3": ("StableDiffusion3Pipeline", "bfloat16", "float16"),
    "flux": ("FluxPipeline", "bfloat16", "float16"),
    "pixart-sigma": ("PixArtSigmaPipeline", "bfloat16", "float16"),
    "sana": ("SanaPipeline", "bfloat16", "float16"),
}
T4 = {"memory_gb": 15, "compute_cap": 7.5, "name": "Tesla T4"}
L4 = {"memory_gb": 24, "compute_cap": 8.9, "name": "NVIDIA L4"}
PROMPTS = ["a red circle on a blue background"]


def _index_only(tmp_path: Path, cls: str) -> str:
    """A model folder with just its ``model_index.json``: all that the dtype rule and the CLI checks read."""
    folder = tmp_path / cls
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls, "_diffusers_version": "0.42.1"}))
    return str(folder)


def _gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpus: list[dict], **extra: object) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", path_with(fake_gpus(tmp_path / "smi", gpus, **extra)))


def _launched(model: str, options: GenerateOptions, world: int = 1) -> tuple[str, str]:
    env = LaunchEnv(rank=0, world_size=world, local_rank=0, local_world_size=world, launcher="torchrun")
    return _check(model, PROMPTS, options, env)


@pytest.mark.parametrize("cap", [8.9, 7.5])
@pytest.mark.parametrize("family", FAMILIES)
def test_device_map_and_launched_paths_pick_the_notebook_dtype(family, cap, monkeypatch, tmp_path) -> None:
    cls, on_l4, on_t4 = FAMILIES[family]
    _gpus(monkeypatch, tmp_path, [L4 if cap == 8.9 else T4] * 2)
    model = _index_only(tmp_path, cls)
    expected = on_l4 if cap == 8.9 else on_t4
    assert family_of(model) == cls
    assert default_dtype("cuda", cls)[0] == expected
    plan = plan_run(model, PROMPTS, GenerateOptions(device_map="balanced", seed=0))
    assert plan.dtype == expected
    assert any("lacks bfloat16" in note for note in plan.notes) == (expected != on_l4)
    assert _launched(model, GenerateOptions(seed=0), world=2) == ("cuda", expected)
    assert _launched(model, GenerateOptions(seed=0, dtype="float32"), world=2) == ("cuda", "float32")


def test_launched_uses_only_the_gpus_of_its_processes(monkeypatch, tmp_path) -> None:
    """One process on a node whose second GPU is a T4: GPU 0 (an L4) has bfloat16, and it is the one used."""
    _gpus(monkeypatch, tmp_path, [L4, T4])
    model = _index_only(tmp_path, "FluxPipeline")
    assert _launched(model, GenerateOptions(seed=0), world=1) == ("cuda", "bfloat16")
    assert _launched(model, GenerateOptions(seed=0), world=2) == ("cuda", "float16")


def test_cuda_visible_devices_decides_which_capability_counts(monkeypatch, tmp_path) -> None:
    """GPU 1 is an L4 and the only one visible: the T4 beside it must not force float16."""
    _gpus(monkeypatch, tmp_path, [T4, L4])
    assert default_dtype("cuda", "FluxPipeline")[0] == "float16"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert default_dtype("cuda", "FluxPipeline") == ("bfloat16", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fake-0")  # by UUID, as CUDA accepts it
    assert default_dtype("cuda", "FluxPipeline")[0] == "float16"


def test_unknown_capability_says_why(monkeypatch, tmp_path) -> None:
    _gpus(monkeypatch, tmp_path, [L4], old_driver=True)
    dtype, note = default_dtype("cuda", "FluxPipeline")
    assert dtype == "float16"
    assert note is not None and "nvidia-smi is too old to report compute capability" in note
    assert "Flux in float16; pass --dtype bfloat16 if your GPUs support it" in note
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi at all
    dtype, note = default_dtype("cuda", "FluxPipeline")
    assert dtype == "float16" and note is not None and "nvidia-smi not found" in note
    assert default_dtype("cuda", "StableDiffusionPipeline") == ("float16", None)  # nothing to doubt
    assert default_dtype("cpu", "FluxPipeline") == ("float32", None)


def test_family_from_a_hub_id_and_a_pipeline_object(tiny_pipe) -> None:
    assert family_of("black-forest-labs/FLUX.1-schnell") == "FluxPipeline"
    assert family_of("stabilityai/stable-diffusion-3.5-large") == "StableDiffusion3Pipeline"
    assert family_of("stable-diffusion-v1-5/stable-diffusion-v1-5") is None  # float16 either way
    assert family_of(tiny_pipe) == "StableDiffusionPipeline"


@pytest.mark.parametrize(
    ("family", "gpu", "expected"), [("flux", L4, "bfloat16"), ("flux", T4, "float16"), ("sd", L4, "float16")]
)
def test_notebook_path_loads_the_model_in_the_rule_s_dtype(family, gpu, expected, monkeypatch, tmp_path) -> None:
    """``plan_run`` without ``--device-map`` loads the real tiny model in the kernel, in the chosen dtype."""
    from nbdist.pipelines import clear_cache
    from nbdist.tiny_families import ensure_family

    model = str(ensure_family(family))
    _gpus(monkeypatch, tmp_path, [gpu])
    try:
        plan = plan_run(model, PROMPTS, GenerateOptions(seed=0, steps=1))
        assert (plan.device_type, plan.dtype, plan.num_processes) == ("cuda", expected, 1)
        assert str(plan.pipe.dtype) == f"torch.{expected}"
        assert any("Flux in float16 (GPU 0, Tesla T4" in note for note in plan.notes) == (gpu is T4)
    finally:
        clear_cache()
