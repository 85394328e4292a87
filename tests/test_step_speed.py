"""``--cache`` and ``--compile`` in real forked workers on real tiny pipelines.

The cache (diffusers' first-block cache on the Flux-shaped tiny model): ``off`` is the plain run to the
last bit, a threshold high enough skips steps, counted per image in its record, note (the caption) and
``manifest.jsonl``, and changes the picture. ``--compile``: the first cell compiles in the warm worker
and says so (header line, the image's note with its time), later cells with or without it use the same
worker (same pid) and compile nothing, and a new size says it compiles again. Speed is measured in
benchmarks/step_speed.py, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nbdist
from nbdist.notebook.gallery_state import GalleryState
from nbdist.tiny_families import ensure_family

STEPS = 6


def pixels(record: Any) -> np.ndarray:
    return np.asarray(record.image, dtype=np.int16)


@pytest.fixture(scope="module")
def flux() -> str:
    return str(ensure_family("flux"))


def test_cache_off_is_the_plain_run_and_fbc_skips_counted_steps(flux: str, tmp_path: Path) -> None:
    common: dict[str, Any] = {"steps": STEPS, "seed": 3, "num_processes": 1, "device": "cpu"}
    plain = nbdist.generate(flux, ["a lighthouse"], save=False, **common)
    swept = nbdist.generate(
        flux, ["a lighthouse"], sweep={"cache": ["off", "fbc=1.0"]}, save_dir=str(tmp_path / "run"), **common
    )
    assert plain.complete and swept.complete, swept.summary()
    off, fbc = sorted(swept, key=lambda r: r.params["cache"] != "off")
    assert int(np.abs(pixels(off) - pixels(plain[0])).max()) == 0  # off equals no flag, to the last bit
    assert off.skipped_steps is None and plain[0].skipped_steps is None and off.note is None
    assert 0 < fbc.skipped_steps < STEPS  # the first step always computes (nothing cached yet)
    assert fbc.note == f"cache fbc=1: {fbc.skipped_steps} of {STEPS} steps skipped"
    assert int(np.abs(pixels(fbc) - pixels(plain[0])).max()) > 0  # skipping changed the picture
    lines = [json.loads(line) for line in (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()]
    by_cache = {line["sweep"]["cache"]: line for line in lines}
    assert by_cache["fbc=1"]["skipped_steps"] == fbc.skipped_steps and "skipped_steps" not in by_cache["off"]
    reopened = nbdist.open_run(tmp_path / "run")
    assert sorted(r.skipped_steps or 0 for r in reopened) == [0, fbc.skipped_steps]


def test_taylorseer_predicts_steps_and_a_later_cell_without_cache_is_plain_again(flux: str) -> None:
    common: dict[str, Any] = {"steps": STEPS, "seed": 1, "device": "cpu", "save": False}
    seer = nbdist.generate(flux, ["a fox"], cache="taylorseer", num_processes=1, **common)
    plain = nbdist.generate(flux, ["a fox"], num_processes=1, **common)  # the same warm worker, hooks removed
    assert seer.workers[0].pid == plain.workers[0].pid
    assert seer[0].skipped_steps == 2  # diffusers' defaults: full steps 0-2 and 4, predicted 3 and 5
    assert plain[0].skipped_steps is None and plain[0].note is None
    fresh = nbdist.generate(flux, ["a fox"], num_processes=2, **common)  # new workers, never cached
    assert int(np.abs(pixels(plain[0]) - pixels(fresh[0])).max()) == 0  # no trace of the cache left behind


class HeaderLog:
    """A run observer holding the live gallery's real header state, recording every worker line it shows."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._state: GalleryState | None = None

    def on_start(self, run: Any) -> None:
        self._state = GalleryState(run)

    def on_message(self, msg: Any) -> None:
        assert self._state is not None
        self._state.apply(msg)
        self.lines += self._state.header().workers

    def on_end(self, result: Any) -> None:
        pass


@pytest.mark.compile
def test_compile_once_per_warm_worker_kept_across_cells(tiny_model: str, tiny_pipe: Any) -> None:
    import torch

    common: dict[str, Any] = {"steps": 2, "seed": 0, "num_processes": 1, "device": "cpu", "save": False}
    prompts = ["a dog", "a cat"]
    first_log, second_log = HeaderLog(), HeaderLog()
    first = nbdist.generate(tiny_model, prompts, compile=True, observers=[first_log], **common)
    second = nbdist.generate(tiny_model, prompts, compile=True, observers=[second_log], **common)
    without = nbdist.generate(tiny_model, prompts, **common)
    assert first.complete and second.complete and without.complete, first.summary()
    assert any("compiling (repeated blocks of UNet2DConditionModel" in line for line in first_log.lines)
    assert first[0].note is not None and first[0].note.endswith(" s in this call"), first[0].note
    assert first[1].note is None  # compiled once, for the first call only
    assert not any("compil" in line for line in second_log.lines)
    assert [r.note for r in [*second, *without]] == [None] * 4
    pids = {r.workers[0].pid for r in (first, second, without)}
    assert len(pids) == 1  # one warm worker served all three cells: nothing forked again, nothing lost
    for record in [*first, *second]:
        expected = tiny_pipe(
            record.prompt, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(record.seed)
        ).images[0]
        assert int(np.abs(pixels(record) - np.asarray(expected, dtype=np.int16)).max()) <= 2
    taller = nbdist.generate(tiny_model, prompts[:1], compile=True, height=32, **common)
    assert taller.workers[0].pid in pids
    assert taller[0].note is not None and taller[0].note.startswith(
        "recompiling for a new size, batch or LoRA set (64x32, batch 1)"
    )


def test_a_cache_sweep_image_copies_as_a_plain_cache_flag() -> None:
    from nbdist.jobs import make_jobs
    from nbdist.options import GenerateOptions
    from nbdist.parent.results.cell import image_cell, image_options
    from nbdist.sweep import parse_sweep

    options = GenerateOptions(steps=4, seed=0, sweep=parse_sweep({"cache": ["off", 0.1]}), compile=True)
    cells = [
        image_cell("m", job.prompt, image_options(options, job)) for job in make_jobs(["a dog"], 1, 0, options.sweep)
    ]
    assert cells == [
        "%%distgen --model m --steps 4 --seed 0\na dog",
        "%%distgen --model m --steps 4 --seed 0 --cache fbc=0.1\na dog",
    ]
