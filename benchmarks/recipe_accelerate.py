"""Scenario (b): the source document's Accelerate recipe, run with ``accelerate launch``.

As in the document, every process calls ``from_pretrained``, moves the pipeline to
``PartialState().device`` and takes its share with ``split_between_processes``, then saves PNGs. Two
changes make it correct and comparable: ``PartialState(cpu=True)`` on a CPU machine (without it the
processes are not joined into a gloo group and each one generates *all* the prompts), and one image
per prompt with the same per-image seeds as every other scenario (the document's snippet keeps only
``images[0]`` of its share).
"""

from __future__ import annotations

import time

from common import GUIDANCE, SEED, EventLog, benchmark_prompts, device_and_dtype, save_png
from scenario_args import scenario_parser


def main() -> None:
    args = scenario_parser(__doc__).parse_args()
    import torch
    from accelerate import PartialState
    from diffusers import DiffusionPipeline

    device, dtype = device_and_dtype(args.device)
    t = time.perf_counter()
    pipeline = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, use_safetensors=True)
    load = time.perf_counter() - t
    distributed_state = PartialState(cpu=device == "cpu")
    pipeline.to(distributed_state.device)
    pipeline.set_progress_bar_config(disable=True)
    rank = distributed_state.process_index
    log = EventLog(args.events.with_name(f"{args.events.stem}-{rank}.json"))
    log.phase("load", load)
    log.phase("threads", torch.get_num_threads())
    prompts = list(enumerate(benchmark_prompts(args.prompts)))
    with distributed_state.split_between_processes(prompts) as share:
        for i, prompt in share:
            generator = torch.Generator("cpu").manual_seed(SEED + i)
            image = pipeline(
                prompt, num_inference_steps=args.steps, guidance_scale=GUIDANCE, generator=generator
            ).images[0]
            save_png(image, args.out, i)
            log.image_done(i)
    log.write()


if __name__ == "__main__":
    main()
