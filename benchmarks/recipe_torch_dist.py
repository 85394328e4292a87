"""Scenario (c): the source document's PyTorch Distributed recipe (``mp.spawn``).

As in the document the pipeline is loaded at module level, so the launching process *and* every
spawned process (which re-imports this module) load it; each rank runs
``init_process_group`` and generates its prompts. Made correct and comparable: gloo instead of NCCL
on a CPU machine, the rendezvous address set (``torchrun`` would set it; ``mp.spawn`` does not), a
contiguous share of the prompts per rank (the document hard-codes one prompt per rank), the same
per-image seeds as every scenario, and ``cores / world`` torch threads per process (torch's default of
all cores in every process would oversubscribe the CPU; ``accelerate launch`` and nbdist both avoid it).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import GUIDANCE, SEED, EventLog, benchmark_prompts, contiguous_share, device_and_dtype, save_png
from diffusers import DiffusionPipeline
from scenario_args import scenario_parser

parser = scenario_parser(__doc__)
parser.add_argument("--num-processes", type=int, default=2)
args = parser.parse_args()
device, dtype = device_and_dtype(args.device)
_t = time.perf_counter()
sd = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, use_safetensors=True)
LOAD_SECONDS = time.perf_counter() - _t


def run_inference(rank: int, world_size: int) -> None:
    """One rank: join the group, take a share, generate and save."""
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    if device == "cuda":
        sd.to(rank)
    else:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))
    sd.set_progress_bar_config(disable=True)
    log = EventLog(args.events.with_name(f"{args.events.stem}-{dist.get_rank()}.json"))
    log.phase("load", LOAD_SECONDS)
    log.phase("threads", torch.get_num_threads())
    prompts = list(enumerate(benchmark_prompts(args.prompts)))
    for i, prompt in contiguous_share(prompts, dist.get_rank(), world_size):
        generator = torch.Generator("cpu").manual_seed(SEED + i)
        image = sd(prompt, num_inference_steps=args.steps, guidance_scale=GUIDANCE, generator=generator).images[0]
        save_png(image, args.out, i)
        log.image_done(i)
    log.write()
    dist.destroy_process_group()


def main() -> None:
    world_size = args.num_processes
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    mp.spawn(run_inference, args=(world_size,), nprocs=world_size, join=True)


if __name__ == "__main__":
    main()
