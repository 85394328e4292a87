"""Colab: its front end draws third-party widgets (the live gallery) only once the notebook asks for them.

Colab's own widget manager knows the core ipywidgets only; ``output.enable_custom_widget_manager()`` (a
call into ``google.colab``) switches the page to one that loads any widget, anywidget's included.
Detected as accelerate detects Colab (``parent/fork/launch.py``, where it changes how workers start).
"""

from __future__ import annotations

from typing import Any

from ..parent.fork.launch import in_colab

__all__ = ["enable_custom_widgets"]


def enable_custom_widgets(ipython: Any) -> bool:
    """On Colab, turn on its custom widget manager; True if it was turned on."""
    if ipython is None or not in_colab():
        return False
    try:
        from google.colab import output  # type: ignore[import-not-found]
    except ImportError:
        return False
    output.enable_custom_widget_manager()
    return True
