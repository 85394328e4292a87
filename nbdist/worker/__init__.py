"""Worker-side code: runs in the forked (or torchrun-started) processes.

Nothing here imports IPython or ipywidgets; everything leaves through ``nbdist.messages``.
"""

from .entry import run_worker

__all__ = ["run_worker"]
