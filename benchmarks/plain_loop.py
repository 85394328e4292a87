"""Scenario (a): the plain loop a user writes first, in one process.

Load the pipeline, then ``for prompt in prompts: pipe(prompt).images[0].save(...)``. On a CPU torch
uses every core for each image through its intra-op threads, so this is already "parallel"; nbdist
has to beat it with processes. ``--threads 1 --warmup`` gives the one-worker one-thread rate that
scaling efficiency is measured against; two such processes started together with ``--share 0/2`` and
``--share 1/2`` (nothing shared, no communication) show what this hardware allows two workers.
"""

from __future__ import annotations

import time

from common import GUIDANCE, SEED, EventLog, benchmark_prompts, contiguous_share, device_and_dtype, save_png
from scenario_args import scenario_parser


def main() -> None:
    parser = scenario_parser(__doc__)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, all cores)")
    parser.add_argument("--warmup", action="store_true", help="one untimed image first (steady-state rate)")
    parser.add_argument("--share", metavar="R/W", help="only share R of W of the prompts (contiguous)")
    args = parser.parse_args()
    log = EventLog(args.events)

    import torch
    from diffusers import DiffusionPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = device_and_dtype(args.device)
    prompts = benchmark_prompts(args.prompts)
    t = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, use_safetensors=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    log.phase("load", time.perf_counter() - t)

    def one(i: int, prompt: str):
        generator = torch.Generator("cpu").manual_seed(SEED + i)
        return pipe(prompt, num_inference_steps=args.steps, guidance_scale=GUIDANCE, generator=generator).images[0]

    if args.warmup:
        one(0, prompts[0])
    t = time.perf_counter()
    jobs = list(enumerate(prompts))
    if args.share:
        rank, world = (int(x) for x in args.share.split("/"))
        jobs = contiguous_share(jobs, rank, world)
    for i, prompt in jobs:
        save_png(one(i, prompt), args.out, i)
        log.image_done(i)
    log.phase("generate", time.perf_counter() - t)
    log.phase("threads", torch.get_num_threads())
    log.write()


if __name__ == "__main__":
    main()
