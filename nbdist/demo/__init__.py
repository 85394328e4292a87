"""nbdist's demo model: a tiny text-to-image pipeline, trained here, that draws the coloured shape it is told.

Why it exists: the built-in tiny pipeline (``nbdist.tiny``) has random weights and makes coloured noise, so
a newcomer cannot tell a working run from a broken one and no test can check that an image matches its
prompt. The demo model is a real ``StableDiffusionPipeline`` (a few MB, shipped inside the package) that
follows prompts such as ``a red circle on a blue background``; ``scripts/train_demo.py`` trains it from
scratch on images drawn by ``nbdist.demo.data``, and ``nbdist.demo.evaluate`` judges its output from pixels.

    from nbdist.demo import demo_model
    %%distgen --model {demo_model()} ...
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["LORA_DIR", "MODEL_DIR", "demo_lora", "demo_model", "demo_settings"]

MODEL_DIR = Path(__file__).resolve().parent / "model"
LORA_DIR = Path(__file__).resolve().parent / "lora" / "red-shapes"


def demo_model() -> Path:
    """The local folder of the shipped demo model, for ``DiffusionPipeline.from_pretrained`` or ``--model``."""
    if not (MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the demo model is missing from {MODEL_DIR}; reinstall nbdist or run scripts/train_demo.py"
        )
    return MODEL_DIR


def demo_settings() -> dict[str, float]:
    """The sampling settings the model was tuned for (``nbdist.json``): ``{"steps": N, "guidance": G}``."""
    return json.loads((demo_model() / "nbdist.json").read_text())


def demo_lora() -> Path:
    """The demo LoRA's folder (``--lora``, ``load_lora_weights``): on the demo model it draws every shape red.

    Trained by ``scripts/train_demo_lora.py`` on the demo model, so a LoRA sweep shows an effect that
    can be checked from pixels (``nbdist.demo.evaluate``): the asked colour at scale 0, red at scale 1.
    """
    if not (LORA_DIR / "pytorch_lora_weights.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo LoRA is missing from {LORA_DIR}; reinstall nbdist or run scripts/train_demo_lora.py"
        )
    return LORA_DIR
