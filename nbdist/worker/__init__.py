"""Worker-side code: runs in the forked (or torchrun-started) processes.

Nothing here imports IPython or ipywidgets; everything leaves through ``nbdist.messages``.
``serve`` is a warm pool worker (the kernel's); ``run_worker`` makes one run's share and exits.
"""

from .entry import run_worker
from .serve import serve

__all__ = ["run_worker", "serve"]
