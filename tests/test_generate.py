"""nbdist.generate with real notebook_launcher forks and the real (tiny) diffusers pipeline."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import nbdist

PROMPTS = [
    "a dog",
    "a cat",
    "an astronaut riding a horse",
    "a lighthouse",
    "a bowl of ramen",
    "a red bicycle",
    "a snowy mountain",
]
STEPS = 2


def reference(pipe, prompt: str, seed: int) -> Image.Image:
    """What a user gets from a plain diffusers call for image ``i`` with seed ``seed + i``."""
    return pipe(
        prompt,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture(scope="module")
def runs(tiny_model: str) -> dict[tuple[int, int], nbdist.GenerationResult]:
    """7 prompts x 2 images at -n 1, 2, 3 (batch 1) and at -n 2 with batch size 3."""
    out = {}
    for n, batch in [(1, 1), (2, 1), (3, 1), (2, 3)]:
        out[n, batch] = nbdist.generate(
            tiny_model, PROMPTS, steps=STEPS, seed=0, num_processes=n, images_per_prompt=2, batch_size=batch
        )
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_image_exactly_once_in_prompt_order(runs, n: int) -> None:
    result = runs[n, 1]
    assert result.complete, result.summary()
    assert [r.index for r in result] == list(range(14))
    assert [r.prompt for r in result] == [p for p in PROMPTS for _ in range(2)]
    assert [r.seed for r in result] == list(range(14))
    assert all(r.image is not None and r.error is None for r in result)
    assert len(result.images) == 14


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ranks_really_differ(runs, n: int) -> None:
    """Each worker takes a distinct contiguous share (split_between_processes), none takes everything."""
    result = runs[n, 1]
    assert sorted(result.workers) == list(range(n))
    assert {r.rank for r in result} == set(range(n))
    pids = {w.pid for w in result.workers.values()}
    assert len(pids) == n and os.getpid() not in pids  # forked workers, never this process, even at -n 1
    ranks = [r.rank for r in result]
    assert ranks == sorted(ranks)  # contiguous shares in prompt order
    assert all(w.device == "cpu" for w in result.workers.values())


def test_images_equal_plain_diffusers_calls(runs, tiny_pipe) -> None:
    result = runs[2, 1]
    for record in result:
        assert max_diff(record.image, reference(tiny_pipe, record.prompt, record.seed)) <= 2, record.index


def test_images_independent_of_workers_and_batch_size(runs) -> None:
    base = runs[1, 1]
    for key in [(2, 1), (3, 1), (2, 3)]:
        other = runs[key]
        for a, b in zip(base, other, strict=True):
            assert a.seed == b.seed
            assert max_diff(a.image, b.image) <= 2, (key, a.index)


def test_different_seeds_give_different_images(runs) -> None:
    result = runs[2, 1]
    assert max_diff(result[0].image, result[1].image) > 10


def test_save_dir_writes_png_metadata_and_manifest(tiny_model: str, tmp_path) -> None:
    prompts = ["a dog", 'a "quoted" ../../etc/passwd / prompt', "ünïcødé 猫 🐱"]
    out = tmp_path / "out"
    result = nbdist.generate(tiny_model, prompts, steps=STEPS, seed=7, num_processes=2, save_dir=str(out))
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) == 3
    assert all("/" not in f and not f.startswith(".") for f in files)
    assert files[0].startswith("00000-a-dog")
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "index.html", "manifest.jsonl"])  # nothing else
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["index"] for m in manifest) == [0, 1, 2]
    by_index = {m["index"]: m for m in manifest}
    for record in result:
        path = out / by_index[record.index]["file"]
        assert record.path == path
        with Image.open(path) as img:
            meta = img.text
            assert max_diff(img.convert("RGB"), record.image) == 0
        assert meta["prompt"] == record.prompt
        assert int(meta["seed"]) == record.seed == 7 + record.index
        assert meta["steps"] == str(STEPS)
        assert meta["guidance"] == "7.5"
        assert meta["model"] == tiny_model
        assert (meta["width"], meta["height"]) == ("64", "64")
        assert json.loads(meta["nbdist"])["prompt"] == record.prompt
        assert by_index[record.index]["prompt"] == record.prompt


def test_random_seed_is_chosen_and_reported(tiny_model: str) -> None:
    result = nbdist.generate(tiny_model, ["a dog"], steps=1, num_processes=1)
    assert isinstance(result.seed, int)
    assert result[0].seed == result.seed
    assert f"seed {result.seed}" in result.summary()


def test_pipeline_object_is_accepted(tiny_pipe) -> None:
    result = nbdist.generate(tiny_pipe, ["a cat"], steps=STEPS, seed=3, num_processes=2)
    assert [r.prompt for r in result] == ["a cat"]
    assert set(result.workers) == {0, 1}  # the idle rank is fine
    assert max_diff(result[0].image, reference(tiny_pipe, "a cat", 3)) <= 2
