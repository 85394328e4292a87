"""``res[i].cell``: the cell that makes one image of a run again, run as written in a new kernel."""

from __future__ import annotations

import pytest
from kernel import Kernel

from nbdist.jobs import ImageJob
from nbdist.options import GenerateOptions
from nbdist.parent.results.cell import image_cell, image_options


def test_the_cell_of_a_swept_image_reproduces_it_in_a_new_kernel(kernel, tmp_path) -> None:
    cell = (
        '%%distgen --model demo -n 2 -k 2 --seed 7 --negative "blurry" --sweep guidance=3,6 -o res\n'
        "a red circle on a blue background\n"
        "a {'yellow'} square on a black background\n"
    )
    ex = kernel.execute(cell)
    assert ex.error is None, ex.error
    again = kernel.value("res[5].cell")
    assert again.startswith("%%distgen --model demo ") and "--sweep" not in again and "-k" not in again
    assert "--guidance 6" in again and "--seed 9" in again and "--negative blurry" in again, again
    assert again.endswith("\na yellow square on a black background"), again
    kernel.execute(f"res[5].image.save({str(tmp_path / 'first.png')!r})")

    with Kernel(cwd=str(tmp_path)) as fresh:  # nothing shared: a new kernel, new workers, the cell as text
        assert fresh.execute("%load_ext nbdist").error is None
        ex = fresh.execute(again.replace("%%distgen ", "%%distgen -o one ", 1))
        assert ex.error is None, ex.error
        same = fresh.value(
            f"(len(one), __import__('numpy').array_equal(__import__('numpy').asarray(one[0].image), "
            f"__import__('numpy').asarray(__import__('PIL.Image').Image.open({str(tmp_path / 'first.png')!r}))))"
        )
    assert same == (1, True)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"size": (64, 32)}, "--height 32 --width 64"),
        ({"steps": 3, "seed": 9}, "--steps 3 --seed 1"),
        ({"eta": 0.5}, "--param eta=0.5"),
    ],
)
def test_sweep_values_become_plain_flags(settings: dict, expected: str) -> None:
    options = GenerateOptions(seed=0, num_processes=2, batch_size=2, save_dir="out")
    options = image_options(options, ImageJob(0, 0, "a dog", 1, tuple(settings.items())))
    first = image_cell("demo", "a {x} for $5", options).splitlines()
    assert expected in first[0] and "-n" not in first[0] and "--save-dir" not in first[0]
    assert first[1] == "a {{x}} for $$5"  # IPython and nbdist expand {} and $: doubled, they stay as written
