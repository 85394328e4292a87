"""Out of memory in a batch: the memory is freed first, then the images are retried one by one (issue 17, item 6).

The pipeline is the real tiny Stable Diffusion pipeline; only its UNet is made to run out of memory, by
a forward pre-hook that raises ``torch.OutOfMemoryError`` (as the CUDA allocator does) when the UNet is
given more than ``limit`` latents. With classifier-free guidance one image is 2 latents, so ``limit=2``
lets a batch of one through and stops a batch of two. Workers are forked, so the hook travels with the
pipeline.
"""

from __future__ import annotations

import queue
import sys
import weakref
from typing import Any

import numpy as np
import pytest
import torch

import nbdist
from nbdist.call_settings import resolve_call
from nbdist.jobs import make_jobs
from nbdist.messages import ImageFailed, ImageReady
from nbdist.options import GenerateOptions
from nbdist.parent.output.report import end_lines
from nbdist.pipelines import load_pipeline
from nbdist.worker.making import batches, make_images
from nbdist.worker.outbox import Outbox
from nbdist.worker.setup import ReadyWorker

PROMPTS = ["a dog", "a cat", "a lighthouse"]
STEPS = 2
GUIDANCE = 7.5  # > 1: classifier-free guidance, two latents per image
FIX = "lower --batch-size or --height/--width, or add --offload model or --quantize nf4"


class UNetCalls:
    """What the UNet saw: per call, the batch it got and whether an exception was being handled; and
    weak references to the activations of the calls that ran out of memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[tuple[int, type[BaseException] | None, bool]] = []  # (latents, exc_info type, freed)
        self.failed_activations: list[weakref.ref[torch.Tensor]] = []

    def __call__(self, module: Any, args: tuple[Any, ...]) -> None:
        latents = int(args[0].shape[0])
        freed = all(ref() is None for ref in self.failed_activations)
        self.calls.append((latents, sys.exc_info()[0], freed))
        if latents > self.limit:
            activations = torch.ones(latents, 64, 64)  # what a real forward holds when it runs out of memory
            self.failed_activations.append(weakref.ref(activations))
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.64 GiB"
            )


def oom_pipe(tiny_model: str, limit: int) -> tuple[Any, UNetCalls]:
    """A fresh copy of the tiny pipeline whose UNet runs out of memory above ``limit`` latents."""
    pipe = load_pipeline(tiny_model, "float32")
    pipe.set_progress_bar_config(disable=True)
    calls = UNetCalls(limit)
    pipe.unet.register_forward_pre_hook(calls)
    return pipe, calls


def reference(pipe: Any, prompt: str, seed: int) -> np.ndarray:
    image = pipe(
        prompt,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def test_a_batch_out_of_memory_is_retried_one_by_one(tiny_model: str, tiny_pipe: Any) -> None:
    pipe, _ = oom_pipe(tiny_model, limit=2)
    result = nbdist.generate(
        pipe, PROMPTS, batch_size=2, steps=STEPS, guidance=GUIDANCE, seed=0, num_processes=1, device="cpu"
    )
    assert result.complete and not result.errors, (result.summary(), [r.error for r in result.errors])
    assert [r.index for r in result] == [0, 1, 2]
    for record in result:
        made = np.asarray(record.image, dtype=np.int16)
        assert np.abs(made - reference(tiny_pipe, record.prompt, record.seed)).max() <= 2, record.index


def test_out_of_memory_for_one_image_says_so_with_the_fix(tiny_model: str) -> None:
    pipe, _ = oom_pipe(tiny_model, limit=0)
    result = nbdist.generate(
        pipe, PROMPTS[:2], batch_size=2, steps=STEPS, guidance=GUIDANCE, num_processes=1, device="cpu"
    )
    expected = f"out of GPU memory (tried to allocate 2.00 GiB): {FIX}"
    assert [r.error for r in result.errors] == [expected, expected], result.summary()
    assert "torch.OutOfMemoryError" in result.errors[0].traceback  # the full story stays one attribute away
    shown = end_lines(result)
    assert any(line.startswith(f"  [worker 0] {expected}: #0 ") for line in shown), shown  # not cut short


@pytest.fixture
def unit(tiny_model: str) -> tuple[Any, UNetCalls, Any]:
    """``make_images`` in this process on a CPU worker, batches of two, the outbox into a plain queue."""
    pipe, calls = oom_pipe(tiny_model, limit=2)
    options = GenerateOptions(steps=STEPS, guidance=GUIDANCE, batch_size=2)
    worker = ReadyWorker(state=None, pipe=pipe, rank=0, device="cpu")
    sent: queue.Queue[Any] = queue.Queue()
    outbox = Outbox(sent, thumbnail_size=32, save=None)
    jobs = make_jobs(PROMPTS[:2], 1, 0)
    assert make_images(worker, batches(jobs, 2), resolve_call(pipe, tiny_model, options), outbox)
    outbox.close()
    return pipe, calls, [sent.get_nowait() for _ in range(sent.qsize())]


def test_the_retry_runs_after_the_except_block_with_the_activations_freed(unit: tuple[Any, UNetCalls, Any]) -> None:
    _, calls, messages = unit
    first, *retried = calls.calls
    assert first == (4, None, True)  # the batch of two, guided: 4 latents, and it ran out of memory
    assert len(retried) == 2 * STEPS and all(latents == 2 for latents, _, _ in retried)
    assert all(handling is None for _, handling, _ in retried), calls.calls  # not inside an except block
    assert all(freed for _, _, freed in retried), "the failed batch's activations were still alive"
    made = [m for m in messages if isinstance(m, ImageReady)]
    assert sorted(m.index for m in made) == [0, 1] and not any(isinstance(m, ImageFailed) for m in messages)


class DecoderCalls(UNetCalls):
    """The same for the VAE's decoder: it runs out of memory above ``limit`` latents (no guidance here)."""


def decode_unit(tiny_model: str, limit: int) -> tuple[UNetCalls, DecoderCalls, list[Any]]:
    """Two images in one batch through ``make_images``; the decoder runs out of memory above ``limit``."""
    pipe, unet = oom_pipe(tiny_model, limit=99)
    decoder = DecoderCalls(limit)
    pipe.vae.decoder.register_forward_pre_hook(decoder)
    worker = ReadyWorker(state=None, pipe=pipe, rank=0, device="cpu")
    sent: queue.Queue[Any] = queue.Queue()
    outbox = Outbox(sent, thumbnail_size=32, save=None)
    options = GenerateOptions(steps=STEPS, guidance=GUIDANCE, batch_size=2)
    assert make_images(
        worker, batches(make_jobs(PROMPTS[:2], 1, 0), 2), resolve_call(pipe, tiny_model, options), outbox
    )
    outbox.close()
    assert not pipe.vae.use_slicing and "decode" not in vars(pipe.vae)  # the VAE is left as it was
    return unet, decoder, [sent.get_nowait() for _ in range(sent.qsize())]


def test_a_decode_out_of_memory_is_retried_one_image_at_a_time_without_denoising_again(
    tiny_model: str, tiny_pipe: Any
) -> None:
    unet, decoder, messages = decode_unit(tiny_model, limit=1)
    assert [latents for latents, _, _ in unet.calls] == [4] * STEPS  # the batch denoised once, never again
    assert [latents for latents, _, _ in decoder.calls] == [2, 1, 1]  # its decode, then one image at a time
    assert all(handling is None and freed for _, handling, freed in decoder.calls[1:]), decoder.calls
    made = sorted((m for m in messages if isinstance(m, ImageReady)), key=lambda m: m.index)
    assert [m.index for m in made] == [0, 1] and not any(isinstance(m, ImageFailed) for m in messages)
    for m, job in zip(made, make_jobs(PROMPTS[:2], 1, 0), strict=True):
        image = np.asarray(m.to_pil(), dtype=np.int16)
        assert np.abs(image - reference(tiny_pipe, job.prompt, job.seed)).max() <= 2, m.index


def test_a_decode_that_does_not_fit_alone_names_vae_tiling(tiny_model: str) -> None:
    unet, _, messages = decode_unit(tiny_model, limit=0)
    assert [latents for latents, _, _ in unet.calls] == [4] * STEPS  # no image-by-image denoising either
    failed = [m for m in messages if isinstance(m, ImageFailed)]
    expected = (
        "out of GPU memory in the VAE decode (tried to allocate 2.00 GiB): add --vae-tiling, or lower --height/--width"
    )
    assert sorted(m.index for m in failed) == [0, 1] and {m.error for m in failed} == {expected}, failed
