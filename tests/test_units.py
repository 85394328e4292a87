"""Small pure pieces: job numbering, prompt parsing, file names, options."""

from __future__ import annotations

import pytest

from nbdist.jobs import make_jobs
from nbdist.notebook.prompts import parse_prompts, prompts_from_namespace
from nbdist.options import GenerateOptions, NbdistUsageError
from nbdist.parent.output.saving import file_name, slug


def test_jobs_are_numbered_in_prompt_order_with_consecutive_images() -> None:
    jobs = make_jobs(["a", "b"], 3, seed=10)
    assert [(j.index, j.prompt, j.prompt_index, j.seed) for j in jobs] == [
        (0, "a", 0, 10), (1, "a", 0, 11), (2, "a", 0, 12), (3, "b", 1, 13), (4, "b", 1, 14), (5, "b", 1, 15),
    ]  # fmt: skip


def test_cell_body_parsing() -> None:
    ns = {"animal": "horse", "n": 3}
    cell = "  a dog  \n\n# comment\n   # indented comment\nan astronaut riding a {animal}\n$n cats\n{missing} stays\n"
    assert parse_prompts(cell, ns) == ["a dog", "an astronaut riding a horse", "3 cats", "{missing} stays"]


def test_prompts_from_namespace() -> None:
    assert prompts_from_namespace("p", {"p": ["a", " b ", ""]}) == ["a", "b"]
    with pytest.raises(NbdistUsageError, match="no variable"):
        prompts_from_namespace("q", {})
    with pytest.raises(NbdistUsageError, match="list of strings"):
        prompts_from_namespace("p", {"p": 3})


@pytest.mark.parametrize(
    "prompt", ["../../etc/passwd", "a/b\\c", "..", "   ", "猫 🐱", 'say "hi" & <b>', "x" * 500, "\x00\n\t"]
)
def test_file_names_are_always_safe(prompt: str) -> None:
    name = file_name(make_jobs([prompt], 1, 0)[0])
    assert name.startswith("00000-") and name.endswith(".png")
    stem = name[len("00000-") : -len(".png")]
    assert stem and all(c.isascii() and (c.isalnum() or c == "-") for c in stem)
    assert len(name) <= 64


def test_slug_keeps_readable_text() -> None:
    assert slug("An Astronaut, riding a Horse!") == "an-astronaut-riding-a-horse"
    assert slug("Crème brûlée") == "creme-brulee"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "--steps"),
        ({"images_per_prompt": -1}, "--images-per-prompt"),
        ({"batch_size": 0}, "--batch-size"),
        ({"num_processes": 0}, "--num-processes"),
        ({"dtype": "float8"}, "--dtype"),
        ({"schedule": "fifo"}, "--schedule"),
    ],
)
def test_options_validation(changes: dict, message: str) -> None:
    with pytest.raises(NbdistUsageError, match=message):
        GenerateOptions(**changes).validate()


def test_size_must_match_vae_scale_factor() -> None:
    GenerateOptions(height=64, width=128).check_size(8)
    with pytest.raises(NbdistUsageError, match="multiple of 8"):
        GenerateOptions(height=60).check_size(8)
