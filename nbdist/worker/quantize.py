"""``--quantize``: the ``PipelineQuantizationConfig`` a worker hands to ``from_pretrained``.

Built in the worker only: it imports the quantization backend (bitsandbytes starts CUDA when imported),
which the kernel must never do. The components to quantize come from ``placement.quantized_components``,
the same rule the memory plan used for its estimate.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..device_libraries import import_in_worker

__all__ = ["quantization_config"]


def _index(model: str, revision: str | None) -> dict[str, tuple[str, str]]:
    """``{component: (library, class name)}`` from the checkpoint's ``model_index.json`` (a folder or the hub).

    The library matters for torchao, whose diffusers and transformers config classes differ.
    """
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(model, revision=revision)
    return {
        name: (str(value[0]), str(value[1]))
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list | tuple) and len(value) == 2 and value[0]
    }


def quantization_config(kind: str, model: str, dtype: str, revision: str | None = None) -> Any:
    """The ``PipelineQuantizationConfig`` for ``--quantize KIND`` of ``model`` computing in ``dtype``.

    bitsandbytes takes one backend name for both libraries. torchao's config classes in diffusers and
    transformers differ in signature, so diffusers wants a per-component mapping for it instead.
    """
    import torch
    from diffusers import PipelineQuantizationConfig

    from ..placement import quantized_components

    index = _index(model, revision)
    names = quantized_components({name: cls for name, (_, cls) in index.items()})
    if kind in ("nf4", "int8"):
        # kept out of the kernel (it starts CUDA on import); diffusers' bitsandbytes helpers skipped their
        # import while it was hidden and need the module now (device_libraries.import_in_worker). Not
        # installed: diffusers says so itself (the plan refuses that before any worker starts).
        with contextlib.suppress(ImportError):
            import_in_worker("bitsandbytes")
    if kind == "nf4":
        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": getattr(torch, dtype)}
        return PipelineQuantizationConfig("bitsandbytes_4bit", kwargs, components_to_quantize=names)
    if kind == "int8":
        return PipelineQuantizationConfig("bitsandbytes_8bit", {"load_in_8bit": True}, components_to_quantize=names)
    if kind == "torchao-int8wo":
        from diffusers import TorchAoConfig as DiffusersTorchAo
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig as TransformersTorchAo

        mapping = {
            name: (DiffusersTorchAo if index[name][0] == "diffusers" else TransformersTorchAo)(Int8WeightOnlyConfig())
            for name in names
        }
        return PipelineQuantizationConfig(quant_mapping=mapping)
    raise ValueError(f"unknown --quantize {kind!r}")
