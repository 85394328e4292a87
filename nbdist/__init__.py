"""nbdist: generate images with diffusion models on every GPU of a machine, from a notebook cell.

``%load_ext nbdist`` registers the ``%%distgen`` cell magic; ``nbdist.generate`` is the plain Python
API it is built on.
"""

from __future__ import annotations

from typing import Any

from .device_libraries import ask_nvml_for_cuda, hide_in_parent

hide_in_parent()  # before anything can import diffusers: see device_libraries.py
ask_nvml_for_cuda()  # diffusers' import-time CUDA probe must not poison fork (same module)

from .demo import demo_model  # noqa: E402
from .options import GenerateOptions, NbdistUsageError  # noqa: E402
from .parent.api import generate, shutdown, status  # noqa: E402
from .parent.pool.run import RunHandle  # noqa: E402
from .parent.results.result import GenerationResult, ImageRecord  # noqa: E402
from .parent.runs.opening import open_run  # noqa: E402

__all__ = [
    "GenerateOptions",
    "GenerationResult",
    "ImageRecord",
    "NbdistUsageError",
    "RunHandle",
    "clear_cache",
    "demo_model",
    "generate",
    "load_ipython_extension",
    "open_run",
    "shutdown",
    "status",
]
__version__ = "0.1.0"


def clear_cache() -> None:
    """Free the models the kernel loaded: the warm workers holding one stop, and the cache forgets them all.

    The kernel keeps ``NBDIST_CACHE_SIZE`` models (default 1) so that re-running a cell loads nothing;
    this gives their memory back at once, e.g. before loading something else in the notebook. The
    workers go too because their pipeline object keeps the kernel's copy alive (and on a GPU holds
    the GPU memory); the next run starts new ones.
    """
    from .pipelines import clear_cache as forget_pipelines

    shutdown()
    forget_pipelines()


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdist``: register ``%%distgen``, and import torch and diffusers once this cell is over.

    The import runs on a background thread (``warm_imports``): the seconds a user spends between this
    cell and the first ``%%distgen`` are the first run's import time saved. It starts when the cell
    that loaded nbdist has finished (its own ``import diffusers`` lines must not race it), and every
    later cell waits for it first; ``NBDIST_WARM_IMPORTS=0`` turns it off.
    """
    from .notebook.colab import enable_custom_widgets
    from .notebook.magic import DistgenMagics
    from .notebook.quiet import install_filters
    from .warm_imports import start_after_cell

    install_filters()
    ipython.register_magics(DistgenMagics)
    enable_custom_widgets(ipython)  # Colab draws the live gallery only with its custom widget manager
    start_after_cell(ipython)
