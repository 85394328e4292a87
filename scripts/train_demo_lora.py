"""Train the demo LoRA: on top of nbdist's demo model, it draws every shape red, whatever colour was asked.

Why: a LoRA sweep in the README or the quickstart must mean something that a test can check from pixels
(``nbdist.demo.evaluate``). The base model draws the colour in the caption; with this LoRA at scale 1 the
shape comes out red (the background stays as asked), and scales in between move from one to the other.

The LoRA (peft ``LoraConfig``, rank 4, on the UNet's attention projections) is trained on the demo
model's own recipe (``scripts/train_demo.py``: v-prediction, min-SNR weights, 10 % empty captions) with
targets drawn by ``nbdist.demo.data`` in red instead of the caption's colour (red backgrounds left out:
a red shape on red would teach nothing). Saved with diffusers' ``save_lora_weights`` in fp16, so
``pipe.load_lora_weights(folder)`` and ``--lora folder`` load it. The base model stays frozen.

    .venv/bin/python scripts/train_demo_lora.py                # ~3 min on one shared core
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_demo import diffusion_loss, lr_at, schedulers, to_tensor, tokenize

from nbdist.demo import LORA_DIR, demo_model, demo_settings
from nbdist.demo.data import caption, draw, random_scene
from nbdist.demo.evaluate import judge

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def red_batch(rng: random.Random, n: int) -> tuple[list[str], np.ndarray]:
    """Captions with their own colour, images with the shape red (never on a red background)."""
    captions, images = [], []
    while len(captions) < n:
        scene = random_scene(rng)
        if scene.background == "red":
            continue
        captions.append(caption(scene))
        images.append(np.asarray(draw(type(scene)(**{**scene.__dict__, "colour": "red"}))))
    return captions, np.stack(images)


@torch.no_grad()
def encode(pipe: Any, rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (scaled as the pipeline scales them) and token ids of ``n`` red-shape training images."""
    latents, ids = [], []
    for start in range(0, n, 256):
        caps, images = red_batch(rng, min(256, n - start))
        latents.append(pipe.vae.encode(to_tensor(images)).latent_dist.mean * pipe.vae.config.scaling_factor)
        ids.append(tokenize(pipe.tokenizer, caps))
    return torch.cat(latents), torch.cat(ids)


def train(pipe: Any, args: argparse.Namespace) -> None:
    """Add the LoRA to the frozen UNet and train only it, for a step count or a time budget."""
    from peft import LoraConfig

    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=TARGETS))
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    z_all, ids_all = encode(pipe, random.Random(args.seed), args.dataset)
    empty = tokenize(pipe.tokenizer, [""])[0]
    sched, _ = schedulers()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    start, budget = time.monotonic(), 60 * args.minutes
    for step in range(args.steps):
        progress = max(step / args.steps, (time.monotonic() - start) / budget)
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress, args.lr, warmup=20)
        idx = torch.randint(0, len(z_all), (args.batch,), generator=gen)
        ids = ids_all[idx].clone()
        ids[torch.rand(args.batch, generator=gen) < 0.1] = empty
        loss = diffusion_loss(pipe.unet, pipe.text_encoder, sched, z_all[idx], ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"[{time.monotonic() - start:6.1f}s] step {step} loss {loss.item():.4f}", flush=True)


def save(pipe: Any, out: Path) -> None:
    """The LoRA alone, in fp16, as ``pytorch_lora_weights.safetensors`` (diffusers' own format)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    state = {k: v.to(torch.float16) for k, v in get_peft_model_state_dict(pipe.unet).items()}
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=state)
    print(f"saved {out} ({(out / 'pytorch_lora_weights.safetensors').stat().st_size / 1e3:.1f} kB)")


def check(out: Path, n: int = 24) -> None:
    """Reload base + LoRA as a user would; count red shapes at scale 0 and 1 on captions asking other colours."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_model())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(out), adapter_name="red")
    settings = demo_settings()
    rng = random.Random(12345)
    scenes = [random_scene(rng, p_size=0, p_position=0) for _ in range(4 * n)]
    scenes = [s for s in scenes if "red" not in (s.colour, s.background)][:n]
    for scale in (0.0, 1.0):
        pipe.set_adapters(["red"], adapter_weights=[scale])
        red = asked = 0
        for i, scene in enumerate(scenes):
            image = pipe(
                caption(scene),
                num_inference_steps=int(settings["steps"]),
                guidance_scale=settings["guidance"],
                generator=torch.Generator("cpu").manual_seed(1_000_000 + i),
            ).images[0]
            seen = judge(image)
            red += seen.colour == "red"
            asked += seen.colour == scene.colour
        print(f"scale {scale}: shape red {red}/{len(scenes)}, the asked colour {asked}/{len(scenes)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=LORA_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3000, help="at most")
    p.add_argument("--minutes", type=float, default=3.0, help="time budget")
    p.add_argument("--dataset", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_model(), dtype=torch.float32)
    train(pipe, args)
    save(pipe, args.out)
    check(args.out)


if __name__ == "__main__":
    main()
