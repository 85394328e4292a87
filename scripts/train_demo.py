"""Train nbdist's demo text-to-image model from scratch, on shapes drawn in code, on one CPU core.

Why this script: the demo model shipped in ``nbdist/demo/model`` must be reproducible by anyone with
this repository and no model hub. It trains, in order:

1. an ``AutoencoderKL`` (64×64 RGB <-> 4×16×16 latents) on drawn images;
2. a ``CLIPTextModel`` (word-level ``CLIPTokenizer`` built from the caption vocabulary) together with a
   ``UNet2DConditionModel`` on the latents, v-prediction on a cosine DDPM schedule, with the caption
   dropped 10 % of the time for classifier-free guidance;

then saves a ``StableDiffusionPipeline`` with ``save_pretrained`` (fp16 safetensors) plus ``nbdist.json``
(the steps and guidance it is meant for), and prints an evaluation on seeds (and some colour/shape/
background combinations) that training never saw.

The UNet phase runs for a time budget (23 min; the learning rate decays with the clock), so on a busy
machine it takes fewer steps: the shipped model took 33 min in all on a shared 2-core machine (VAE 1600
steps, UNet 4162 steps at batch 32) and scored colours 100 %, shapes 98.7 % on unseen seeds.

    .venv/bin/python scripts/train_demo.py                # full run (~33 min on one core)
    .venv/bin/python scripts/train_demo.py --smoke --out /tmp/demo-smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from collections import Counter
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nbdist.demo.data import PALETTE, SHAPES, Scene, caption, draw, random_scene, vocabulary
from nbdist.demo.evaluate import accuracy_table
from nbdist.tiny import small_clip_text_encoder

MAX_TOKENS = 24  # longest caption is 14 tokens with its start/end tokens


def log(msg: str) -> None:
    """Print with the elapsed time, flushed, so a background run's log file can be followed."""
    print(f"[{time.monotonic() - START:7.1f}s] {msg}", flush=True)


START = time.monotonic()


# ---------------------------------------------------------------------------------------------- models


def build_tokenizer() -> Any:
    """A CLIPTokenizer with one token per caption word, built offline.

    CLIP's tokenizer is BPE: a word becomes a token only through a chain of merges. A tiny BPE training
    over the vocabulary (merge the most frequent pair until every word is one symbol) gives merges that
    reproduce whole words; other text falls back to characters or the unknown token.
    """
    from transformers import CLIPTokenizer

    seqs = [[*w[:-1], w[-1] + "</w>"] for w in vocabulary()]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in (p for s in seqs for p in s):
        vocab.setdefault(piece, len(vocab))
    merges: list[tuple[str, str]] = []
    while pairs := Counter((s[i], s[i + 1]) for s in seqs for i in range(len(s) - 1)):
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        seqs = [_merge(s, best) for s in seqs]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _merge(seq: list[str], pair: tuple[str, str]) -> list[str]:
    """Apply one BPE merge to a symbol sequence."""
    out: list[str] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def build_models(tokenizer: Any) -> tuple[Any, Any, Any]:
    """The VAE, text encoder and UNet, with seeded random weights (sizes chosen for one CPU core)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,  # flat shapes need no global attention; it would cost a third more time
    )
    text_encoder = small_clip_text_encoder(len(tokenizer), 64, 2, max_positions=MAX_TOKENS)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 48, 64),
        layers_per_block=1,
        # Cross-attention at 8×8 and 4×4 only: at 16×16 it would double the cost of a step.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=16,
        addition_embed_type="text",  # the pooled caption also conditions every ResNet, via the time embedding
        addition_embed_type_num_heads=4,
    )
    return vae, text_encoder, unet


def schedulers() -> tuple[Any, Any]:
    """The training noise schedule (DDPM, cosine, v-prediction) and the sampler built from it."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    sample = DPMSolverMultistepScheduler.from_config(train.config, timestep_spacing="trailing", steps_offset=1)
    return train, sample


# ------------------------------------------------------------------------------------------------ data


def held_out_triples(seed: int, n: int = 12) -> set[tuple[str, str, str]]:
    """(colour, shape, background) combinations kept out of training, to test composition."""
    triples = [(c, s, b) for c, s, b in product(PALETTE, SHAPES, PALETTE) if c != b]
    return set(random.Random(seed).sample(triples, n))


def training_scenes(rng: random.Random, n: int, held_out: set[tuple[str, str, str]]) -> list[Scene]:
    """``n`` random scenes (30 % with a size word, 30 % with a position), none of a held-out combination."""
    scenes: list[Scene] = []
    while len(scenes) < n:
        sc = random_scene(rng)
        if (sc.colour, sc.shape, sc.background) not in held_out:
            scenes.append(sc)
    return scenes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 64, 64, 3) -> float (n, 3, 64, 64) in [-1, 1], as the VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def draw_batch(rng: random.Random, n: int, held_out: set[tuple[str, str, str]]) -> tuple[torch.Tensor, list[str]]:
    """Draw ``n`` training images (as a VAE input tensor) with their captions."""
    scenes = training_scenes(rng, n, held_out)
    return to_tensor(np.stack([np.asarray(draw(sc)) for sc in scenes])), [caption(sc) for sc in scenes]


def lr_at(step: int, progress: float, peak: float, warmup: int = 100) -> float:
    """Linear warm-up over the first steps, then cosine decay to a tenth of the peak as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


# ---------------------------------------------------------------------------------------------- training


def train_vae(vae: Any, steps: int, rng: random.Random, held_out: set[tuple[str, str, str]]) -> None:
    """Autoencoder training: L1 + MSE reconstruction, a tiny KL term (sharp edges matter more)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, step / steps, 2e-3)
        x, _ = draw_batch(rng, 8, held_out)  # small batches, many steps: better per second than 16 here
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def check_vae(vae: Any, seed: int, held_out: set[tuple[str, str, str]], n: int = 192) -> None:
    """Judge the VAE's reconstructions like generated images: the ceiling of what the UNet can reach."""
    from PIL import Image

    rng = random.Random(seed + 3)
    scenes = training_scenes(rng, n, held_out)
    x = to_tensor(np.stack([np.asarray(draw(sc)) for sc in scenes]))
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    arr = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    pairs = [(sc, Image.fromarray(a)) for sc, a in zip(scenes, arr, strict=True)]
    table, _ = accuracy_table({"vae reconstructions": pairs})
    log(f"mse {F.mse_loss(rec, x).item():.5f}\n{table}")


@torch.no_grad()
def encode_dataset(vae: Any, tokenizer: Any, n: int, rng: random.Random, held_out: set) -> tuple[torch.Tensor, ...]:
    """Latents (posterior means, scaled to unit std) and token ids of ``n`` fresh training images."""
    latents, ids = [], []
    for start in range(0, n, 256):
        x, caps = draw_batch(rng, min(256, n - start), held_out)
        latents.append(vae.encode(x).latent_dist.mean)
        ids.append(tokenize(tokenizer, caps))
    z = torch.cat(latents)
    scale = 1.0 / z.std().item()
    vae.register_to_config(scaling_factor=scale)
    log(f"encoded {n} images; latent std {1 / scale:.3f} -> scaling_factor {scale:.4f}")
    return z * scale, torch.cat(ids)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids padded exactly as StableDiffusionPipeline pads them (to model_max_length)."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def diffusion_loss(unet: Any, text_encoder: Any, sched: Any, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """v-prediction loss with min-SNR (γ = 5) weighting, which speeds up convergence a lot."""
    t = torch.randint(0, sched.config.num_train_timesteps, (z.shape[0],))
    noise = torch.randn_like(z)
    noisy = sched.add_noise(z, noise, t)
    target = sched.get_velocity(z, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=5.0) / (snr + 1)
    return (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()


def train_unet(
    models: tuple[Any, Any], data: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace, empty: torch.Tensor
) -> tuple[Any, Any]:
    """Train text encoder + UNet together on the latents; returns their EMA copies (used for sampling)."""
    unet, text_encoder = models
    z_all, ids_all = data
    sched, _ = schedulers()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    ema = [copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()]
    ema_params = [*ema[0].parameters(), *ema[1].parameters()]
    gen = torch.Generator().manual_seed(args.seed)
    start, budget = time.monotonic(), 60 * args.unet_minutes
    for step in range(args.unet_steps):
        # The schedule follows steps or the clock, whichever is further along: on a shared machine the time
        # budget ends training with the learning rate fully decayed, at however many steps fit.
        progress = max(step / args.unet_steps, (time.monotonic() - start) / budget)
        if progress >= 1:
            log(f"unet: time budget of {args.unet_minutes} min reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, args.unet_lr)
        idx = torch.randint(0, len(z_all), (args.batch,), generator=gen)
        ids = ids_all[idx].clone()
        ids[torch.rand(args.batch, generator=gen) < 0.1] = empty  # classifier-free guidance: no caption
        loss = diffusion_loss(unet, text_encoder, sched, z_all[idx], ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema_params, params, strict=True):
                e.lerp_(p, 1 - decay)
        if step % 200 == 0:
            log(f"unet step {step} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} progress {progress:.2f}")
    return ema[0], ema[1]


# ------------------------------------------------------------------------------------ saving, evaluation


def save_pipeline(parts: dict[str, Any], out: Path) -> None:
    """Save a StableDiffusionPipeline of the trained parts with save_pretrained, in fp16 safetensors."""
    from diffusers import StableDiffusionPipeline

    _, sampler = schedulers()
    pipe = StableDiffusionPipeline(
        **parts, scheduler=sampler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    out.mkdir(parents=True, exist_ok=True)
    # UNet and VAE in fp16 (diffusers loads them back as float32 unless told otherwise); the text encoder
    # stays float32, since transformers keeps a saved dtype and an fp16 encoder would feed fp16 to a fp32 UNet.
    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    log(f"saved pipeline to {out} ({size / 1e6:.2f} MB of weights)")


def generate(pipe: Any, scenes: list[Scene], seeds: list[int], steps: int, guidance: float) -> list[Any]:
    """Images for the scenes' captions, image i from ``Generator("cpu").manual_seed(seeds[i])``."""
    images = []
    for i in range(0, len(scenes), 16):
        prompts = [caption(sc) for sc in scenes[i : i + 16]]
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + 16]]
        images += pipe(prompts, generator=gens, num_inference_steps=steps, guidance_scale=guidance).images
    return images


def eval_sets(held_out: set[tuple[str, str, str]], seed: int) -> dict[str, list[tuple[Scene, int]]]:
    """Test prompts and seeds no training image used: every seen combination once, held-out ones 8 times."""
    rng = random.Random(seed + 1)
    triples = sorted((c, s, b) for c, s, b in product(PALETTE, SHAPES, PALETTE) if c != b)
    seen = [random_scene(rng, c, s, b, p_size=0, p_position=0) for c, s, b in triples if (c, s, b) not in held_out]
    held = [random_scene(rng, c, s, b, p_size=0, p_position=0) for c, s, b in sorted(held_out) for _ in range(8)]
    words = training_scenes(rng, 48, held_out)
    words = [random_scene(rng, sc.colour, sc.shape, sc.background, p_size=1, p_position=1) for sc in words]
    sets = {"seen combos, new seeds": seen, "held-out combos": held, "with size+position words": words}
    base = 1_000_000  # generator seeds far from anything used in training
    return {name: [(sc, base + 1000 * k + i) for i, sc in enumerate(scs)] for k, (name, scs) in enumerate(sets.items())}


def pick_guidance(pipe: Any, held_out: set[tuple[str, str, str]], steps: int, seed: int, n: int) -> float:
    """The guidance scale with the most images fully right on a validation set (other seeds than the test)."""
    rng = random.Random(seed + 2)
    scenes = [random_scene(rng, p_size=0, p_position=0) for _ in range(n)]
    scenes = [sc for sc in scenes if (sc.colour, sc.shape, sc.background) not in held_out]
    seeds = [2_000_000 + i for i in range(len(scenes))]
    best, best_acc = 2.0, -1.0
    for g in (1.5, 2.0, 3.0, 4.5):
        _, nums = accuracy_table({"val": list(zip(scenes, generate(pipe, scenes, seeds, steps, g), strict=True))})
        acc, row = nums["val"]["all three"], nums["val"]
        log(f"validation guidance {g}: all right {acc:.1%} (colour {row['colour']:.1%}, shape {row['shape']:.1%})")
        if acc > best_acc:
            best, best_acc = g, acc
    return best


def time_one_image(pipe: Any, steps: int, guidance: float) -> float:
    """Median seconds for one image (batch of one) on the current thread count."""
    times = []
    for i in range(7):
        t = time.perf_counter()
        pipe(
            "a red circle on a blue background",
            generator=torch.Generator("cpu").manual_seed(i),
            num_inference_steps=steps,
            guidance_scale=guidance,
        )
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def evaluate(out: Path, held_out: set[tuple[str, str, str]], args: argparse.Namespace) -> None:
    """Reload the saved folder like a user would (float32), pick guidance, write nbdist.json, print the table."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    guidance = pick_guidance(pipe, held_out, args.steps, args.seed, args.val)
    (out / "nbdist.json").write_text(json.dumps({"steps": args.steps, "guidance": guidance}) + "\n")
    log(f"nbdist.json: steps {args.steps}, guidance {guidance}")
    sets = eval_sets(held_out, args.seed)
    if args.smoke:
        sets = {k: v[:16] for k, v in sets.items()}
    groups = {}
    for name, items in sets.items():
        scenes, seeds = [sc for sc, _ in items], [s for _, s in items]
        groups[name] = list(zip(scenes, generate(pipe, scenes, seeds, args.steps, guidance), strict=True))
    table, _ = accuracy_table(groups)
    what = "unseen seeds; held-out = combinations never trained"
    log(f"evaluation at {args.steps} steps, guidance {guidance} ({what}):\n{table}")
    log(f"one image, batch of one, 1 thread: {time_one_image(pipe, args.steps, guidance):.3f} s")


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are the shipped model's recipe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "nbdist" / "demo" / "model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1600)
    p.add_argument("--unet-steps", type=int, default=8000, help="at most")
    p.add_argument("--unet-minutes", type=float, default=23.0, help="time budget of the UNet phase")
    p.add_argument("--unet-lr", type=float, default=1.5e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dataset", type=int, default=10000, help="training images encoded for the UNet")
    p.add_argument("--steps", type=int, default=15, help="sampling steps the model is meant for")
    p.add_argument("--val", type=int, default=96, help="validation images per guidance scale")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="a one-minute run that checks the pipeline works")
    args = p.parse_args(argv)
    if args.smoke:
        args.vae_steps, args.unet_steps, args.dataset, args.val, args.unet_minutes = 60, 100, 512, 16, 1.0
    return args


def main(argv: list[str] | None = None) -> None:
    """Train VAE, then text encoder + UNet, save, evaluate."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    held_out = held_out_triples(args.seed + 13)
    log(f"held-out combinations: {sorted(held_out)}")
    tokenizer = build_tokenizer()
    vae, text_encoder, unet = build_models(tokenizer)
    n_params = sum(p.numel() for m in (vae, text_encoder, unet) for p in m.parameters())
    log(f"parameters: {n_params / 1e6:.2f} M; {args}")
    train_vae(vae, args.vae_steps, rng, held_out)
    check_vae(vae, args.seed, held_out)
    z, ids = encode_dataset(vae, tokenizer, args.dataset, rng, held_out)
    empty = tokenize(tokenizer, [""])[0]
    unet, text_encoder = train_unet((unet, text_encoder), (z, ids), args, empty)
    log("training done")
    save_pipeline({"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}, args.out)
    evaluate(args.out, held_out, args)
    log("done")


if __name__ == "__main__":
    main()
