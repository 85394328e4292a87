"""Tiny random-weight pipelines of every text-to-image family nbdist supports, built offline.

Why it exists: each family (SD 1.x, SDXL, SDXL-Turbo, SD3, Flux, PixArt-Σ, Sana, LCM) has its own
pipeline class, call signature, defaults, VAE scale factor and size rules, and nbdist must get all of
them right. Tests cannot download multi-gigabyte checkpoints (or reach a hub at all), so this module
builds each family from small configs (taken from diffusers' own ``get_dummy_components`` test
fixtures, with tokenizers written here instead of downloaded) and saves it with ``save_pretrained``.
Loading it back with ``DiffusionPipeline.from_pretrained(folder)`` goes through exactly the same path as a
real checkpoint and gives the real class.

Sizes were chosen so that a call *without* height/width (the pipeline's own default) is cheap too:

* the UNet families and SD3 produce 32×32 by default (SD3 with its real scale factor 8, so that sizes
  step by 16 as with the real model);
* PixArt-Σ bins every size to its smallest table (256×256) unless ``use_resolution_binning=False``; the VAE
  here has scale factor 1 and the transformer patch size 8, so the default output is 32×32;
* Flux's default side is hard-coded as ``128 * vae_scale_factor``: 128×128 with the scale factor 1 used here;
* Sana's default is 1024×1024 in the signature; it bins to its smallest table (512×512) and resizes back.
  The VAE keeps Sana's real scale factor 32 so that nbdist's size rules are exercised.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BUILD_VERSION", "FAMILIES", "RECOMMENDED", "build_family", "ensure_family", "family_path"]

FAMILIES: tuple[str, ...] = ("sd", "sdxl", "sdxl-turbo", "sd3", "flux", "pixart-sigma", "sana", "lcm")

# Checkpoint-recommended settings written as ``nbdist.json`` next to the model (as a user would for a
# local Turbo/LCM folder); nbdist reads them in preference to the class's ``__call__`` defaults.
RECOMMENDED: dict[str, dict[str, Any]] = {"sdxl-turbo": {"steps": 2, "guidance": 0.0}}

# Bumped whenever a config below changes, so that cached folders from older builds are rebuilt.
BUILD_VERSION = 3
_MARKER = ".tiny-family-version"


# --------------------------------------------------------------------------------------------- tokenizers
def _clip_tokenizer():  # noqa: ANN202 - transformers type, imported lazily
    """CLIP's byte-level tokenizer without merges (shared with ``nbdist.tiny``): no vocabulary download."""
    from nbdist.tiny import _tokenizer

    return _tokenizer()


def _t5_tokenizer():  # noqa: ANN202 - transformers type, imported lazily
    """A Unigram T5 tokenizer over single characters.

    Real T5 vocabularies are 32k SentencePiece pieces from a hub; one piece per printable ASCII
    character (plus the word-start marker) tokenizes any English prompt, other characters become
    ``<unk>``, and the special tokens keep T5's ids (pad 0, eos 1, unk 2).
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(33, 127)]
    pieces += [("▁" + chr(c), -1.5) for c in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _gemma_tokenizer():  # noqa: ANN202 - transformers type, imported lazily
    """A Gemma tokenizer whose vocabulary is the 256 byte-fallback tokens: any text, no download."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=8192)


# ----------------------------------------------------------------------------------------- text encoders
def _clip_text(tokenizer: Any, projection: bool = False, hidden: int = 32):  # noqa: ANN202 - transformers type
    """A 2-layer CLIP text encoder (``WithProjection`` for SDXL/SD3's second and pooled encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5_text(tokenizer: Any, d_model: int = 32):  # noqa: ANN202 - transformers type
    """A 2-layer T5 encoder (like ``hf-internal-testing/tiny-random-t5``, built from a config)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _gemma_text(tokenizer: Any):  # noqa: ANN202 - transformers type
    """A 1-layer Gemma-2 encoder with Sana's test config (hidden size 8)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        head_dim=16,
        hidden_size=8,
        intermediate_size=64,
        max_position_embeddings=8192,
        num_attention_heads=2,
        num_hidden_layers=1,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        attn_implementation="eager",
    )
    return Gemma2Model(config)


# ---------------------------------------------------------------------------------------- VAEs and UNets
def _kl_vae(channels: tuple[int, ...], latent: int, groups: int, **extra: Any):  # noqa: ANN202 - diffusers type
    """An ``AutoencoderKL``; its scale factor is ``2 ** (len(channels) - 1)``."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=latent,
        norm_num_groups=groups,
        **extra,
    )


def _flow_vae(latent: int, blocks: int):  # noqa: ANN202 - diffusers type
    """The VAE of diffusers' Flux/SD3 tests (4 channels a block), without its mid-block attention.

    Scale factor ``2 ** (blocks - 1)``. Flux decodes 128×128 by default with one block; self-attention over
    16k pixels would cost a gigabyte for nothing.
    """
    return _kl_vae(
        (4,) * blocks,
        latent=latent,
        groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        mid_block_add_attention=False,
    )


def _sd_unet(**extra: Any):  # noqa: ANN202 - diffusers type
    """The SD/LCM test UNet; latent side 16 gives 32×32 images with the two-block VAE."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
        **extra,
    )


def _louder(layer: Any, factor: float) -> None:
    """Scale a denoiser's output projection in place.

    With default initialisation the tiny Flux and PixArt transformers predict so little that a different
    prompt or step count moves pixels by only 3–6 levels: too close to the 2/255 tolerance nbdist's tests
    compare images with to tell a wrong argument from a right one. A larger prediction makes every call
    argument visible in the image (checked: 9 levels or more for prompt, guidance and steps).
    """
    import torch

    with torch.no_grad():
        layer.weight.mul_(factor)


_SD_BETAS: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


# ---------------------------------------------------------------------------------------------- families
def _sd():  # noqa: ANN202 - diffusers type
    """SD 1.x: UNet, CLIP, PNDM (as ``stable-diffusion-v1-5``), no safety checker."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = _clip_tokenizer()
    return StableDiffusionPipeline(
        vae=_kl_vae((4, 8), latent=4, groups=2),
        text_encoder=_clip_text(tokenizer),
        tokenizer=tokenizer,
        unet=_sd_unet(),
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1, **_SD_BETAS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _lcm():  # noqa: ANN202 - diffusers type
    """LCM: the SD UNet with a guidance embedding (``time_cond_proj_dim``) and the LCM scheduler."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    tokenizer = _clip_tokenizer()
    return LatentConsistencyModelPipeline(
        vae=_kl_vae((4, 8), latent=4, groups=2),
        text_encoder=_clip_text(tokenizer),
        tokenizer=tokenizer,
        unet=_sd_unet(time_cond_proj_dim=32),
        scheduler=LCMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=1, **_SD_BETAS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(turbo: bool = False):  # noqa: ANN202 - diffusers type
    """SDXL (Euler, leading) or SDXL-Turbo (Euler ancestral, trailing): two CLIPs, text-time embedding."""
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # pooled projection 32 + 6 time ids * 8
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
        norm_num_groups=1,
    )
    if turbo:
        scheduler = EulerAncestralDiscreteScheduler(timestep_spacing="trailing", steps_offset=1, **_SD_BETAS)
    else:
        scheduler = EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1, **_SD_BETAS)
    tokenizer = _clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_kl_vae((4, 8), latent=4, groups=2),
        text_encoder=_clip_text(tokenizer),
        text_encoder_2=_clip_text(tokenizer, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def _sd3():  # noqa: ANN202 - diffusers type
    """SD3: MMDiT over two CLIPs (pooled 32 + 32) and a T5 whose width is the joint attention width."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        sample_size=4,  # 4 latent pixels * scale factor 8: 32×32 by default
        patch_size=2,  # with SD3's real scale factor 8, sizes step by 16 exactly as in SD3
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
    )
    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(latent=4, blocks=4),
        text_encoder=_clip_text(clip, projection=True),
        tokenizer=clip,
        text_encoder_2=_clip_text(clip, projection=True),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_text(t5, d_model=64),
        tokenizer_3=t5,
    )


def _flux():  # noqa: ANN202 - diffusers type
    """Flux (dev-like: guidance embedded in the transformer): CLIP pooled + T5 sequence, packed latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,  # one latent channel, packed 2×2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,  # = sum(axes_dims_rope)
        num_attention_heads=1,  # one head halves the cost of the 4608-token default attention
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    _louder(transformer.proj_out, 10.0)
    vae = _flow_vae(latent=1, blocks=1)
    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=_clip_text(clip),
        tokenizer=clip,
        text_encoder_2=_t5_text(t5),
        tokenizer_2=t5,
        transformer=transformer,
    )


def _pixart_sigma():  # noqa: ANN202 - diffusers type
    """PixArt-Σ: DiT with ada-norm-single over T5; sample size 32 selects the smallest binning table."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(
        sample_size=32,
        num_layers=2,
        patch_size=16,  # binning always denoises 256×256 latents: 256 tokens; sizes step by 16 as in PixArt
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,  # learned sigma
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    _louder(transformer.proj_out, 4.0)
    t5 = _t5_tokenizer()
    return PixArtSigmaPipeline(
        tokenizer=t5,
        text_encoder=_t5_text(t5),
        vae=_kl_vae((4,), latent=4, groups=1, mid_block_add_attention=False),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


def _sana():  # noqa: ANN202 - diffusers type
    """Sana: linear-attention DiT over Gemma-2, DC-AE with Sana's real scale factor 32 (six levels)."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=16,  # the smallest binning table (512×512)
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        encoder_block_out_channels=(8,) * 6,
        decoder_block_out_channels=(8,) * 6,
        encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        encoder_layers_per_block=(1,) * 6,
        decoder_layers_per_block=(1,) * 6,
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    tokenizer = _gemma_tokenizer()
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=_gemma_text(tokenizer),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


_BUILDERS: dict[str, Callable[[], Any]] = {
    "sd": _sd,
    "sdxl": _sdxl,
    "sdxl-turbo": lambda: _sdxl(turbo=True),
    "sd3": _sd3,
    "flux": _flux,
    "pixart-sigma": _pixart_sigma,
    "sana": _sana,
    "lcm": _lcm,
}


# ------------------------------------------------------------------------------------------------- cache
def build_family(name: str, seed: int = 0):  # noqa: ANN201 - diffusers type
    """Build the tiny pipeline of family ``name`` with weights drawn from ``seed``, on the CPU."""
    import torch

    if name not in _BUILDERS:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    return _BUILDERS[name]()


def family_path(name: str) -> Path:
    """Where ``ensure_family`` keeps a family: ``$NBDIST_CACHE`` or ``~/.cache/nbdist``, under ``families/``."""
    root = Path(os.environ.get("NBDIST_CACHE", Path.home() / ".cache" / "nbdist"))
    return root / "families" / name


def _is_current(folder: Path) -> bool:
    """Whether ``folder`` holds a complete build of this module's current configs.

    Configs change (a cheaper patch size, a new family default); a folder written by an older version
    would silently give tests the old behaviour, so each build records ``BUILD_VERSION`` in a marker file.
    """
    try:
        return (folder / "model_index.json").exists() and int((folder / _MARKER).read_text()) == BUILD_VERSION
    except (OSError, ValueError):
        return False


def _discard(folder: Path) -> None:
    """Move a stale build aside (one rename, so readers see old or nothing) and delete it."""
    import contextlib
    import shutil
    import tempfile

    trash = Path(tempfile.mkdtemp(prefix=folder.name + ".stale.", dir=folder.parent))
    with contextlib.suppress(OSError):  # already moved or replaced by a concurrent caller
        os.rename(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def ensure_family(name: str, path: str | Path | None = None) -> Path:
    """Save family ``name`` with ``save_pretrained`` (safetensors) unless already there; return the folder.

    The folder loads back with ``DiffusionPipeline.from_pretrained(folder)`` like a downloaded model.
    Writing goes through a temporary folder and a rename, so concurrent callers (parallel tests, several
    workers) never see a half-written model. A folder from an older ``BUILD_VERSION`` is rebuilt.
    """
    import shutil
    import tempfile

    if name not in _BUILDERS:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    target = Path(path) if path is not None else family_path(name)
    if _is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build_family(name).save_pretrained(tmp, safe_serialization=True)
        if name in RECOMMENDED:
            (tmp / "nbdist.json").write_text(json.dumps(RECOMMENDED[name]) + "\n")
        (tmp / _MARKER).write_text(f"{BUILD_VERSION}\n")
        if target.exists() and not _is_current(target):
            _discard(target)
        os.rename(tmp, target)
    except OSError:
        if not _is_current(target):
            raise
    finally:  # our copy lost the race (or failed): theirs is as good as ours
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    """``python -m nbdist.tiny_families [FAMILY ...]``: write the families (all by default), print folders."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("families", nargs="*", metavar="FAMILY", help=", ".join(FAMILIES))
    for name in parser.parse_args(argv).families or FAMILIES:
        print(ensure_family(name))


if __name__ == "__main__":
    main()
