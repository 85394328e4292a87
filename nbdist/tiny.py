"""A tiny Stable Diffusion pipeline built offline from configs, with random weights.

Why it exists: this project (and its users' CI) often has no model hub. Tests, the quickstart and the
benchmarks still need a *real* ``StableDiffusionPipeline`` that goes through the same
``save_pretrained`` / ``from_pretrained`` path as ``stable-diffusion-v1-5/stable-diffusion-v1-5``. Only the sizes are
small; every component is the real diffusers/transformers class.

Two sizes are provided: ``"tiny"`` (milliseconds per image, for tests) and ``"cpu"`` (roughly half a
second per image on a 2-core machine, so that denoising dominates as it does with real models).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SIZES",
    "TinySize",
    "build_tiny_pipeline",
    "ensure_tiny_pipeline",
    "small_clip_text_encoder",
    "tiny_pipeline_path",
]


@dataclass(frozen=True)
class TinySize:
    """Hyper-parameters of one offline pipeline size."""

    block_channels: tuple[int, ...]
    layers_per_block: int
    cross_attention_dim: int
    text_layers: int
    vae_channels: tuple[int, ...]
    sample_size: int  # latent side; the image side is sample_size * 2 ** (len(vae_channels) - 1)
    vae_attention: bool = True  # the VAE's mid-block attention (quadratic in the latent's pixels)


SIZES: dict[str, TinySize] = {
    "tiny": TinySize((32, 64), 1, 32, 2, (32, 64), 32),
    "cpu": TinySize((64, 128, 192), 2, 128, 4, (32, 64, 64), 32),
    # 512x512 images that cost little to make (a fast model's stand-in for benchmarks/data_path.py): the
    # VAE scales its 16x16 latents by 32 through thin layers, with no attention
    "wide": TinySize((32, 64), 1, 32, 2, (16,) * 6, 16, vae_attention=False),
}


def _tokenizer():  # noqa: ANN202 - transformers type, imported lazily
    """A byte-level CLIP tokenizer with no merges: every character is a token.

    Real CLIP vocabularies are 49k BPE tokens downloaded from a hub; a byte-level vocabulary built
    here tokenizes any text (unicode included) and keeps CLIP's 77-token limit and special tokens.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def small_clip_text_encoder(vocab_size: int, hidden: int, layers: int, max_positions: int = 77):  # noqa: ANN201
    """A small ``CLIPTextModel`` (4 heads, MLP twice as wide, token ids bos 0 / eos 1 / pad 1), random weights.

    Shared by the tiny pipelines and the demo model's training script, so both encode prompts alike.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=max_positions,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


def _tiny_unet(spec: Any):  # noqa: ANN202 - diffusers type
    """The size's SD-shaped UNet: cross-attention in every block but the last."""
    from diffusers import UNet2DConditionModel

    n = len(spec.block_channels)
    return UNet2DConditionModel(
        sample_size=spec.sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=spec.block_channels,
        layers_per_block=spec.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=spec.cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def _tiny_vae(spec: Any):  # noqa: ANN202 - diffusers type
    """The size's KL autoencoder, its image side the UNet's sample size times its scale factor."""
    from diffusers import AutoencoderKL

    m = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * m,
        up_block_types=("UpDecoderBlock2D",) * m,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=spec.sample_size * 2 ** (m - 1),
        mid_block_add_attention=spec.vae_attention,
    )


def build_tiny_pipeline(size: str = "tiny", seed: int = 0):  # noqa: ANN201 - diffusers type
    """Build a ``StableDiffusionPipeline`` of the given size with seeded random weights, on the CPU."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    spec = SIZES[size]
    torch.manual_seed(seed)
    unet = _tiny_unet(spec)  # drawn in this order from the seed: UNet, VAE, text encoder
    vae = _tiny_vae(spec)
    tokenizer = _tokenizer()
    text_encoder = small_clip_text_encoder(len(tokenizer), spec.cross_attention_dim, spec.text_layers)
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_pipeline_path(size: str = "tiny") -> Path:
    """Where ``ensure_tiny_pipeline`` keeps a size: a per-user cache, outside the repository."""
    import os

    root = Path(os.environ.get("NBDIST_CACHE", Path.home() / ".cache" / "nbdist"))
    return root / f"tiny-sd-{size}"


def ensure_tiny_pipeline(size: str = "tiny", path: str | Path | None = None) -> Path:
    """Save the pipeline of ``size`` with ``save_pretrained`` (safetensors) unless already there.

    Returns the folder, which loads back with ``DiffusionPipeline.from_pretrained(folder)`` exactly
    like a downloaded model. Writing goes through a temporary folder and a rename, so concurrent
    callers (parallel tests) never see a half-written model.
    """
    import os
    import tempfile

    target = Path(path) if path is not None else tiny_pipeline_path(size)
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    build_tiny_pipeline(size).save_pretrained(tmp, safe_serialization=True)
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race; theirs is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    """``python -m nbdist.tiny [--size tiny|cpu] [DIR]``: write a tiny pipeline and print its folder."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("path", nargs="?")
    args = parser.parse_args(argv)
    print(ensure_tiny_pipeline(args.size, args.path))


if __name__ == "__main__":
    main()
