"""VS Code's notebooks: one gallery, not two.

JupyterLab, Notebook 7 and nbconvert honour the CSS that hides a run's static copy next to its live
gallery (``static_html.py``); VS Code's renderer isolates each output and ignores it, so after a live run
it showed the gallery twice. In VS Code the live gallery is the one shown: the result's value is its
text line, and a background run keeps no extra static copy. Detected from what VS Code's Jupyter
extension puts in the kernel: ``VSCODE_PID`` in its environment, ``__vsc_ipynb_file__`` in its namespace.
"""

from __future__ import annotations

import os
import sys

__all__ = ["in_vscode"]


def in_vscode() -> bool:
    """True in a kernel started by VS Code (never imports IPython: outside one there is nothing to ask)."""
    if os.environ.get("VSCODE_PID"):
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "__vsc_ipynb_file__" in getattr(shell, "user_ns", {})
