"""The speed levers change how work is spread, never what is generated.

``--schedule dynamic`` (workers pull the next batch from a shared counter) must make every image
exactly once, with the pixels of a plain diffusers call, whichever worker got it;
``NBDIST_THREADS_PER_WORKER`` must reach the workers' torch and reject nonsense before anything starts;
the GC freeze that keeps forked workers from copying the kernel's heap must be undone afterwards.
(``--batch-size`` equality is covered in test_generate.py.) No timings are asserted here: speed is
measured by benchmarks/run.py.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import nbdist

PROMPTS = ["a dog", "a cat", "a lighthouse", "a bowl of ramen", "a red bicycle", "a snowy mountain", "a fox"]
STEPS = 2


def test_dynamic_schedule_makes_each_image_once_with_plain_call_pixels(tiny_model: str, tiny_pipe) -> None:
    result = nbdist.generate(
        tiny_model, PROMPTS, steps=STEPS, seed=5, num_processes=2, schedule="dynamic", batch_size=2
    )
    assert result.complete, result.summary()
    assert [r.index for r in result] == list(range(len(PROMPTS)))
    assert {r.rank for r in result} == {0, 1}  # both workers pulled work
    for record in result:
        expected = tiny_pipe(
            record.prompt,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(5 + record.index),
        ).images[0]
        diff = np.abs(np.asarray(record.image, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max()
        assert diff <= 2, record.index


def test_threads_per_worker_override_reaches_the_workers(tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDIST_THREADS_PER_WORKER", "3")
    result = nbdist.generate(tiny_model, PROMPTS[:2], steps=1, seed=0, num_processes=2, device="cpu")
    assert result.complete, result.summary()
    assert [w.threads for w in result.workers.values()] == [3, 3]
    assert gc.get_freeze_count() == 0  # the GC freeze around the fork is undone: the kernel collects again


def test_default_threads_share_the_cores(tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbdist.parent.machine.devices import cpu_count

    monkeypatch.delenv("NBDIST_THREADS_PER_WORKER", raising=False)
    result = nbdist.generate(tiny_model, PROMPTS[:2], steps=1, seed=0, num_processes=2, device="cpu")
    assert [w.threads for w in result.workers.values()] == [max(1, cpu_count() // 2)] * 2


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_threads_override_is_a_usage_error(tiny_model: str, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NBDIST_THREADS_PER_WORKER", value)
    with pytest.raises(nbdist.NbdistUsageError, match="NBDIST_THREADS_PER_WORKER"):
        nbdist.generate(tiny_model, PROMPTS[:1], steps=1, seed=0, num_processes=1, device="cpu")
