"""Call defaults from a model's config files, for runs where the kernel loads no pipeline (issue 31, item 1).

With ``--quantize``, ``--device-map`` or ``--cluster MODEL_ID`` only the workers load the model; the
kernel's call settings must still say what the images are made with. For every tiny family the values
read from the files must be those of the loaded pipeline (steps, guidance, size, scheduler, sources).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbdist.call_settings import resolve_call
from nbdist.options import GenerateOptions
from nbdist.pipelines import load_pipeline
from nbdist.tiny_families import FAMILIES, ensure_family


@pytest.mark.parametrize("family", FAMILIES)
def test_settings_from_the_files_are_the_loaded_pipelines(family: str) -> None:
    folder = str(ensure_family(family))
    loaded = resolve_call(load_pipeline(folder, "float32"), folder, GenerateOptions())
    unloaded = resolve_call(None, folder, GenerateOptions())
    assert unloaded.effective == loaded.effective and unloaded.sources == loaded.sources
    assert None not in (unloaded.effective["height"], unloaded.effective["steps"], unloaded.effective["guidance"])


def test_the_users_values_and_unused_flags_without_a_pipeline() -> None:
    """What the user gives still wins; a flag the class does not take is named as with a loaded pipeline."""
    folder = str(ensure_family("flux"))
    call = resolve_call(None, folder, GenerateOptions(steps=3, height=64, negative="blur"))
    assert (call.steps, call.effective["height"], call.effective["width"]) == (3, 64, 128)
    assert call.kwargs == {"num_inference_steps": 3, "height": 64}
    assert call.notes == ["nbdist: FluxPipeline uses a negative prompt only with --param true_cfg_scale=4.0 (> 1)"]


def test_missing_configs_leave_the_size_unknown_rather_than_guessed(tmp_path: Path) -> None:
    """A hub snapshot may hold only ``model_index.json``: a guessed size would be recorded on every image."""
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    call = resolve_call(None, str(tmp_path), GenerateOptions())
    assert (call.effective["height"], call.effective["width"]) == (None, None)
    assert (call.effective["steps"], call.effective["guidance"]) == (50, 7.5)  # the class's own defaults


@pytest.mark.parametrize(
    ("model", "steps", "guidance"),
    [
        ("stabilityai/stable-diffusion-3.5-large", 28, 3.5),
        ("stabilityai/stable-diffusion-3.5-medium", 40, 4.5),
        ("stabilityai/stable-diffusion-3.5-large-turbo", 4, 0.0),
    ],
)
def test_each_sd35_checkpoint_gets_its_model_cards_settings(model: str, steps: int, guidance: float) -> None:
    """SD3.5 Large and Medium ran at the class's guidance 7.0, twice what their cards use (issue 31, item 3)."""
    call = resolve_call(None, model, GenerateOptions())
    assert (call.effective["steps"], call.effective["guidance"]) == (steps, guidance)
    assert call.sources["steps"] == call.sources["guidance"] == "table"
    assert call.kwargs == {"num_inference_steps": steps, "guidance_scale": guidance}


def test_every_checkpoint_entry_names_its_model_card() -> None:
    from nbdist import call_settings

    lines = Path(call_settings.__file__).read_text(encoding="utf-8").splitlines()
    for name in call_settings.CHECKPOINTS:
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f'"{name}":'))
        assert lines[at - 1].strip().startswith(f"# https://huggingface.co/{name}"), name
