"""The demo model: its drawn data, its pixel judge, and the shipped weights following their prompts.

Why: the demo model is what makes a run's output mean something (a red circle when asked for one), so
these tests check the three links of that chain, fast: the drawing is right, the judge reads drawings
right, and the shipped pipeline, loaded through plain diffusers, draws what its prompt says.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from nbdist.demo import demo_model, demo_settings
from nbdist.demo.data import PALETTE, POSITIONS, SHAPES, Scene, caption, draw, random_scene, vocabulary
from nbdist.demo.evaluate import accuracy_table, judge, judge_scene


def test_drawing_has_the_asked_colours_and_size():
    scene = Scene("red", "square", "blue", side=20, cx=32, cy=32)
    img = np.asarray(draw(scene))
    assert img.shape == (64, 64, 3)
    assert tuple(img[32, 32]) == PALETTE["red"]
    assert tuple(img[0, 0]) == PALETTE["blue"]
    assert (np.abs(img.astype(int) - PALETTE["red"]).sum(-1) == 0).sum() == pytest.approx(400, abs=45)


def test_captions_follow_the_template_and_use_only_vocabulary_words():
    rng = random.Random(0)
    words = set(vocabulary())
    for _ in range(200):
        sc = random_scene(rng, p_size=0.5, p_position=0.5)
        text = caption(sc)
        assert sc.colour != sc.background
        assert text.startswith("a ") and text.endswith(f"on a {sc.background} background")
        assert f"{sc.colour} {sc.shape}" in text
        assert set(text.split()) <= words
    assert caption(Scene("red", "circle", "blue", 20, 32, 32)) == "a red circle on a blue background"
    assert caption(Scene("red", "circle", "blue", 20, 10, 10, "small", "in the top left")) == (
        "a small red circle in the top left on a blue background"
    )


def test_unsaid_size_and_position_vary():
    rng = random.Random(1)
    scenes = [random_scene(rng, "red", "circle", "blue", p_size=0, p_position=0) for _ in range(100)]
    assert len({sc.side for sc in scenes}) > 15
    assert np.ptp([sc.cx for sc in scenes]) > 25 and np.ptp([sc.cy for sc in scenes]) > 25


def test_judge_reads_drawn_images_right():
    rng = random.Random(2)
    for _ in range(300):
        sc = random_scene(rng, p_size=0.5, p_position=0.5)
        verdict = judge_scene(draw(sc), sc)
        assert all(verdict.values()), (caption(sc), sc, verdict)


def test_judge_fill_ratios_and_empty_images():
    fills = {s: judge(draw(Scene("white", s, "black", 40, 32, 32))).fill for s in SHAPES}
    assert fills["circle"] == pytest.approx(0.785, abs=0.03)
    assert fills["square"] == pytest.approx(1.0, abs=0.02)
    assert fills["triangle"] == pytest.approx(0.5, abs=0.05)
    empty = judge(np.full((64, 64, 3), PALETTE["green"], dtype=np.uint8))
    assert empty.background == "green" and empty.shape is None
    assert set(POSITIONS) and len(POSITIONS) == 9


def test_accuracy_table_counts():
    sc = Scene("red", "circle", "blue", 30, 32, 32)
    wrong = Scene("red", "square", "blue", 30, 32, 32)
    text, numbers = accuracy_table({"x": [(sc, draw(sc)), (sc, draw(wrong))]})
    assert numbers["x"]["colour"] == 1.0 and numbers["x"]["shape"] == 0.5 and numbers["x"]["all three"] == 0.5
    assert "all three" in text


def test_shipped_folder_is_small_and_says_how_to_sample():
    folder = demo_model()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert 0 < weights <= 4_000_000
    settings = demo_settings()
    assert set(settings) == {"steps", "guidance"}
    assert 1 <= settings["steps"] <= 50 and 1 <= settings["guidance"] <= 10


def test_tokenizer_has_one_token_per_caption_word():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(demo_model() / "tokenizer")
    for word in vocabulary():
        assert len(tok(word).input_ids) == 3, word  # start, the word, end


@pytest.fixture(scope="module")
def demo_pipe():
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(demo_model(), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_loads_as_float32_stable_diffusion(demo_pipe):
    import torch

    assert type(demo_pipe).__name__ == "StableDiffusionPipeline"
    assert demo_pipe.unet.dtype == torch.float32 and demo_pipe.vae.dtype == torch.float32


def test_loads_with_plain_from_pretrained_defaults():
    """No dtype given: every part must agree on one (the text encoder is saved as float32 for that)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(demo_model())
    pipe.set_progress_bar_config(disable=True)
    assert len({pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype}) == 1
    image = pipe("a red circle on a blue background", num_inference_steps=2).images[0]
    assert image.size == (64, 64)


PROMPTS = [
    Scene("red", "circle", "blue", 30, 32, 32),
    Scene("yellow", "square", "black", 30, 32, 32),
    Scene("white", "triangle", "green", 30, 32, 32),
    Scene("purple", "circle", "orange", 30, 32, 32),
]


def test_generations_follow_the_prompt(demo_pipe):
    import torch

    settings = demo_settings()
    images = demo_pipe(
        [caption(sc) for sc in PROMPTS],
        generator=[torch.Generator("cpu").manual_seed(i) for i in range(len(PROMPTS))],
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance"],
    ).images
    verdicts = [judge_scene(img, sc) for img, sc in zip(images, PROMPTS, strict=True)]
    assert images[0].size == (64, 64)
    for sc, v in zip(PROMPTS, verdicts, strict=True):
        assert v["colour"] and v["background"], (caption(sc), v)
    assert sum(v["shape"] for v in verdicts) >= 3, verdicts
