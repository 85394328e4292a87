"""Weighted and long prompts through a real kernel: compel's embeddings in the workers, as plain diffusers gets them."""

from __future__ import annotations

import pytest
from kernel import Kernel
from test_faults import stderr_lines

from nbdist.prompt_syntax import a1111_to_compel, has_weights

REFERENCE = """
import numpy as np, torch
torch.set_num_threads(1)  # reference calls in the kernel: no OpenMP spin-waiting against other load
from compel import CompelForSD
from diffusers import StableDiffusionPipeline
from nbdist.prompt_syntax import a1111_to_compel
ref = StableDiffusionPipeline.from_pretrained({model!r})
ref.set_progress_bar_config(disable=True)
def diff(r, weighted=True):
    g = torch.Generator("cpu").manual_seed(r.seed)
    kw = dict(num_inference_steps=2, guidance_scale=7.5, generator=g)
    if weighted:
        out = CompelForSD(ref)([a1111_to_compel(r.prompt)], negative_prompt=[""])
        img = ref(prompt_embeds=out.embeds, negative_prompt_embeds=out.negative_embeds, **kw).images[0]
    else:
        img = ref(r.prompt, **kw).images[0]
    return float(np.abs(np.asarray(img, dtype=float) - np.asarray(r.image, dtype=float)).max())
"""
CELL = "%%distgen --model {model} -n 2 --steps 2 --seed 0 -o {out} {flags}\n{prompts}"
LONG = " ".join(f"word{i % 7}" for i in range(150))  # ~600 tokens of the tiny tokenizer, far past 77


def test_weighted_and_long_prompts(kernel: Kernel, tiny_model: str) -> None:
    prompts = "a (red:1.5) fox\na [blue] car ((big))"
    ex = kernel.execute(CELL.format(model=tiny_model, out="w", flags="", prompts=prompts))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert kernel.execute(REFERENCE.format(model=tiny_model)).error is None
    assert kernel.value("max(diff(r) for r in w)") <= 2, "not compel's embeddings"
    # Off: the brackets are text, as plain diffusers reads them.
    ex = kernel.execute(CELL.format(model=tiny_model, out="p", flags="--prompt-syntax plain", prompts=prompts))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert kernel.value("max(diff(r, weighted=False) for r in p)") <= 2
    assert kernel.value("w[0].image.tobytes() != p[0].image.tobytes()")
    # Past 77 tokens: the last words now change the image (diffusers alone cuts them, and warns).
    long = f"{LONG} a red fox\n{LONG} a blue car"
    ex = kernel.execute(CELL.format(model=tiny_model, out="l", flags="--seed 5 -k 1", prompts=long))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert kernel.value("[r.seed for r in l]") == [5, 6]
    ex = kernel.execute(
        CELL.format(model=tiny_model, out="l2", flags="--sweep seed=5", prompts=long).replace("--seed 0 ", "")
    )
    assert ex.error is None, ex.stream()
    assert kernel.value("l2[0].image.tobytes() != l2[1].image.tobytes()"), "the last words were cut"
    assert kernel.value("max(diff(r) for r in l2)") <= 2
    ex = kernel.execute(
        CELL.format(model=tiny_model, out="c", flags="--sweep seed=5 --prompt-syntax plain", prompts=long).replace(
            "--seed 0 ", ""
        )
    )
    assert any("truncated" in line for line in stderr_lines(ex)), ex.stream()
    assert kernel.value("c[0].image.tobytes() == c[1].image.tobytes()")


def test_a1111_translation_unit() -> None:
    assert a1111_to_compel("a (red:1.3) [blurry] (fox)") == "a (red)1.3 (blurry)0.9091 (fox)1.1"
    assert a1111_to_compel("((big)) dog") == "((big)1.1)1.1 dog"
    assert a1111_to_compel(r"a \(literal\) (open") == r"a \(literal\) \(open"
    assert a1111_to_compel("plain words") == "plain words"
    assert has_weights("(x:2)") and not has_weights(r"a \(x\)") and not has_weights("plain")


@pytest.mark.parametrize("shape", ["sd", "sdxl"])
def test_a_weight_of_one_makes_plain_diffusers_image(shape: str) -> None:
    """``(cat:1.0)`` goes through compel and must give the image of a plain diffusers call for "cat".

    On SDXL it did not (issue 31, item 3), for two reasons: compel encodes the pooled embedding from
    the raw prompt, brackets and weights included, and with no ``--negative`` it sent the embedding
    of "" where diffusers sends zeros (``force_zeros_for_empty_prompt``). Measured before: 26/255
    without a negative, 10/255 with one, on this tiny SDXL shape. Real worker code, real pipelines.
    """
    import numpy as np
    import torch

    from nbdist.call_settings import resolve_call
    from nbdist.jobs import make_jobs
    from nbdist.options import GenerateOptions
    from nbdist.pipelines import load_pipeline
    from nbdist.tiny_families import ensure_family
    from nbdist.worker.generation import run_batch
    from nbdist.worker.prompt_weights import needs_compel

    folder = str(ensure_family(shape))
    pipe = load_pipeline(folder, "float32")
    pipe.set_progress_bar_config(disable=True)
    for negative in (None, "blurry"):
        call = resolve_call(pipe, folder, GenerateOptions(steps=2, negative=negative))
        jobs = make_jobs(["a photo of a (cat:1.0)"], 1, 0, {})
        assert needs_compel(pipe, [jobs[0].prompt], negative, call.prompt_syntax)
        made = run_batch(pipe, jobs, call)[0].image
        generator = torch.Generator("cpu").manual_seed(jobs[0].seed)
        plain = pipe("a photo of a cat", negative_prompt=negative, num_inference_steps=2, generator=generator).images[0]
        assert np.abs(np.asarray(made, dtype=int) - np.asarray(plain, dtype=int)).max() <= 2, (shape, negative)
