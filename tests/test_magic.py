"""%%distgen in a real Jupyter kernel, observed over the kernel protocol like a front-end would."""

from __future__ import annotations

import pytest
from kernel import Kernel

CELL_PROMPTS = "a dog\na cat\n\n# a comment\n  an astronaut riding a {animal}  \na $thing\n"


def test_magic_streams_images_while_the_cell_runs(kernel: Kernel, tiny_model: str) -> None:
    kernel.execute(f"model = {tiny_model!r}; animal = 'horse'; thing = 'lighthouse'")
    kernel.execute("%%distgen --model {model} -n 1 --steps 1 --seed 0\nwarm up")  # model load + imports
    prompts = "\n".join(f"prompt number {i}" for i in range(8))
    ex = kernel.execute(f"%%distgen --model {{model}} -n 2 --steps 6 --seed 0 -o res\n{prompts}")
    assert ex.error is None, ex.error
    updates = ex.image_updates()
    assert len(updates) >= 8  # every image went to the browser as it came, not in one final message
    end = ex.of_type("execute_result")[0].at
    first, last = updates[0].at, updates[-1].at
    # The first image is shown well before the cell ends, and images keep coming over the run.
    assert first < 0.6 * end, (first, end)
    assert last - first > 0.3 * end, (first, last, end)
    assert kernel.value("[r.index for r in res]") == list(range(8))
    assert kernel.value("sorted({r.rank for r in res})") == [0, 1]


def test_cell_body_parsing_expansion_and_out(kernel: Kernel, tiny_model: str) -> None:
    kernel.execute(f"model = {tiny_model!r}; animal = 'horse'; thing = 'lighthouse'")
    ex = kernel.execute(f"%%distgen --model {{model}} -n 2 --steps 1 --seed 5 -k 2 -o res\n{CELL_PROMPTS}")
    assert ex.error is None, ex.error
    assert kernel.value("[r.prompt for r in res]") == [
        p for p in ["a dog", "a cat", "an astronaut riding a horse", "a lighthouse"] for _ in range(2)
    ]
    assert kernel.value("[r.seed for r in res]") == list(range(5, 13))
    assert kernel.value("type(_).__name__") == "GenerationResult"  # the cell's value is the result too
    assert kernel.value("len(res.images)") == 8
    assert kernel.value("res[0].image.size") == (64, 64)


def test_two_runs_in_one_kernel_and_a_kernel_side_partial_state(kernel: Kernel, tiny_model: str) -> None:
    """A PartialState made in the kernel must not leak into the forked workers (it is a singleton)."""
    kernel.execute(f"model = {tiny_model!r}")
    ex = kernel.execute("from accelerate import PartialState\nPartialState(cpu=True).num_processes")
    assert ex.error is None, ex.error
    for name in ("first", "second"):
        ex = kernel.execute(f"%%distgen --model {{model}} -n 3 --steps 1 --seed 0 -o {name}\na\nb\nc\nd\ne\nf")
        assert ex.error is None, ex.error
        assert kernel.value(f"[r.index for r in {name}]") == list(range(6))
        assert kernel.value(f"[r.rank for r in {name}]") == [0, 0, 1, 1, 2, 2]
    # Same seed, same images, run after run.
    assert kernel.value("all(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, second))")


def test_help_lists_every_option(kernel: Kernel) -> None:
    ex = kernel.execute("%%distgen?\n")
    text = str(ex.reply.get("payload")) + str([m.content for m in ex.messages])  # ? help comes as a payload
    for option in ("--model", "--pipe", "--dtype", "--num-processes", "--steps", "--guidance", "--height",
                   "--width", "--negative", "--seed", "--images-per-prompt", "--batch-size", "--save-dir",
                   "--prompts", "--out"):  # fmt: skip
        assert option in text, option


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--model {model} --bogus 1", "unrecognized arguments"),
        ("--model {model} --steps 0", "--steps must be a positive integer"),
        ("--model {model} --dtype float8", "invalid choice"),
        ("--steps 2", "say which model"),
    ],
)
def test_usage_errors_are_one_line(kernel: Kernel, tiny_model: str, line: str, expected: str) -> None:
    kernel.execute(f"model = {tiny_model!r}")
    ex = kernel.execute(f"%%distgen {line}\na dog")
    err = ex.stream("stderr")
    assert "UsageError" in err and expected in err, err
    assert len(err.strip().splitlines()) <= 3
    assert not ex.of_type("comm_open", "display_data")  # nothing was started or drawn


def test_line_magic_takes_prompts_from_a_list(kernel: Kernel, tiny_model: str) -> None:
    kernel.execute(f"model = {tiny_model!r}; ideas = ['a dog', 'a cat', 'a cow']")
    ex = kernel.execute("%distgen --model {model} --prompts ideas -n 2 --steps 1 --seed 0 -o res")
    assert ex.error is None, ex.error
    assert kernel.value("[r.prompt for r in res]") == ["a dog", "a cat", "a cow"]
    ex = kernel.execute("%%distgen --model {model} --prompts ideas\na horse")
    assert "not both" in ex.stream("stderr")


def test_demo_model_draws_what_the_cell_says(kernel: Kernel) -> None:
    """Meaning through %%distgen itself: the demo model at its own defaults (nbdist.json) follows the prompt."""
    ex = kernel.execute(
        "from nbdist import demo_model\nfrom nbdist.demo.evaluate import judge\nmodel = str(demo_model())"
    )
    assert ex.error is None, ex.error
    ex = kernel.execute(
        "%%distgen --model {model} -n 2 --seed 0 -o res\n"
        "a red circle on a blue background\na yellow square on a black background\n"
        "a green triangle on a white background\na purple circle on a yellow background"
    )
    assert ex.error is None, ex.error
    assert kernel.value("(res.settings['steps'], res.sources['steps'])") == (15, "model file")
    seen = kernel.value("[(j.colour, j.background, j.shape) for j in map(judge, res.images)]")
    wanted = [("red", "blue", "circle"), ("yellow", "black", "square"), ("green", "white", "triangle")]
    wanted.append(("purple", "yellow", "circle"))
    colours = sum(s[:2] == w[:2] for s, w in zip(seen, wanted, strict=True))
    shapes = sum(s[2] == w[2] for s, w in zip(seen, wanted, strict=True))
    assert colours == 4 and shapes >= 3, seen
