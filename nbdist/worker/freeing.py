"""Letting go of a failed call's memory before a retry: its traceback's frames, cycles, the CUDA cache.

Shared by the batch retry (``making.py``) and the decode retry (``decode_retry.py``): a retry after an
out-of-memory error needs exactly the memory the failed call's frames still hold.
"""

from __future__ import annotations

import gc
import traceback

__all__ = ["free_memory", "let_go"]


def let_go(exc: BaseException) -> None:
    """Clear the locals of the failed call's frames and cut every traceback of the chain.

    Unbinding ``exc`` is not always enough: a frame caught in a reference cycle (an exception kept in a
    local, a callback holding its pipeline) would keep its tensors until the garbage collector ran. Only
    ``exc``'s own frames are cleared: they all ended when it propagated (the catching frame, still
    running, is skipped by ``clear_frames``), while an earlier exception in the chain may have been
    caught by a generator that is still alive.
    """
    traceback.clear_frames(exc.__traceback__)
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) not in seen:
            seen.add(id(current))
            current.__traceback__ = None
            todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def free_memory(device: str) -> None:
    """Return the failed call's memory before the retry: collect what cycles still hold, then give the
    CUDA caching allocator's free blocks back. Never on a CPU worker (no CUDA context is made there)."""
    gc.collect()
    if device == "cpu":
        return
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
