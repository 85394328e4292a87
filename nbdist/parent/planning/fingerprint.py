"""Notice that a pipeline object changed after the warm workers copied it.

The workers hold the copy of ``--pipe`` they inherited at fork. If the user then swaps the scheduler,
loads or fuses a LoRA, replaces a component or changes weights in place, the workers' copy is stale
and must never be served. A fingerprint taken at fork and again before each run says whether (and
what) changed; the pool then starts new workers from the current object.

What it reads, and why that is enough and cheap (one pass over the parameter list, no tensor data):
- each component's identity (a replaced VAE, tokenizer or scheduler is a new object);
- the scheduler's class and config (``register_to_config`` changes the config in place);
- the LoRA adapters loaded and active (``set_adapters`` changes which run, not any tensor);
- every parameter's and buffer's identity and version counter: ``load_state_dict``, ``fuse_lora``,
  ``fuse_qkv_projections`` and any in-place op (``add_``, ``copy_``) bump a version or add tensors.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fingerprint", "what_changed"]

Fingerprint = dict[str, Any]


def _tensor_state(module: Any) -> tuple[Any, ...]:
    """(id, version) of every parameter and buffer; inference tensors carry no version: their data pointer."""
    out = []
    for tensor in (*module.parameters(), *module.buffers()):
        try:
            version = tensor._version
        except RuntimeError:  # an inference tensor: only a replacement can change it
            version = tensor.data_ptr()
        out.append((id(tensor), version))
    return tuple(out)


def _adapters(pipe: Any) -> Any:
    """LoRA adapters loaded per component and the active ones (empty without peft)."""
    try:
        return (repr(pipe.get_list_adapters()), repr(pipe.get_active_adapters()))
    except Exception:  # no peft, or a pipeline without LoRA support
        return ()


def fingerprint(pipe: Any) -> Fingerprint:
    """What identifies the state of ``pipe``, per component (compare with ``what_changed``)."""
    state: Fingerprint = {}
    components = getattr(pipe, "components", {}) or {}
    for name, component in components.items():
        entry: tuple[Any, ...] = (id(component),)
        if hasattr(component, "parameters") and hasattr(component, "buffers"):
            entry += _tensor_state(component)
        elif hasattr(component, "config") and name == "scheduler":
            entry += (type(component).__name__, repr(dict(component.config)))
        state[name] = entry
    state["adapters"] = _adapters(pipe)
    return state


def what_changed(before: Fingerprint, after: Fingerprint) -> list[str]:
    """Names of the parts that differ (``[]``: the workers' copy is current)."""
    names = sorted(set(before) | set(after))
    return [name for name in names if before.get(name) != after.get(name)]
