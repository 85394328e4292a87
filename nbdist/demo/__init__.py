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

__all__ = ["MODEL_DIR", "demo_model", "demo_settings"]

MODEL_DIR = Path(__file__).resolve().parent / "model"


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
