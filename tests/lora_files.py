"""LoRA files for tests, made offline with peft on a local pipeline and saved as diffusers saves them."""

from __future__ import annotations

from pathlib import Path

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_lora(model: str, folder: Path, seed: int = 0, rank: int = 4, strength: float = 0.5) -> Path:
    """A random LoRA on ``model``'s UNet attention layers (``pytorch_lora_weights.safetensors`` in ``folder``).

    lora_B is random (peft starts it at zero, which would change nothing), so every scale shows.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if (folder / "pytorch_lora_weights.safetensors").is_file():
        return folder
    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS), adapter_name="made")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * strength)
    state = get_peft_model_state_dict(pipe.unet, adapter_name="made")
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state)
    return folder
