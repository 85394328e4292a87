"""Import torch, diffusers and what a first run needs on a background thread from ``%load_ext nbdist``.

Why: the first ``%%distgen`` of a kernel used to spend most of its wait importing torch and diffusers
(seconds, up to tens of seconds on a busy machine) before anything else could happen. A user leaves a
few seconds between ``%load_ext nbdist`` and that first cell (reading, typing, the cell below the
import); importing meanwhile turns those seconds into a shorter first run (benchmarks/RESULTS.md,
"first cell").

Safety, in the order it matters:

- Nothing here starts CUDA: these are imports only, of modules a run imports in the kernel anyway;
  bitsandbytes (which does start CUDA) is kept out by ``hide_in_parent``, which ran when ``nbdist``
  itself was imported, before this thread can start.
- No fork while this thread imports (a child forked while another thread holds an import lock can
  deadlock on it): ``generate`` calls ``wait`` before the pool forks anything.
- No cell runs while this thread imports: it starts after the ``%load_ext`` cell has finished
  (``start_after_cell``: that cell's own imports must not race it), ``settle`` is a ``pre_run_cell``
  hook (two threads importing the same packages at once can fail: see ``settle``), and ``wait`` joins
  the thread before nbdist imports anything heavy.
- A failure costs nothing: ``wait`` imports again in the foreground, where an error that persists
  comes as a normal traceback in the cell that needs the modules.

``NBDIST_WARM_IMPORTS=0`` turns the background import off (the benchmark's baseline).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from typing import Any

from . import phases

__all__ = ["STEPS", "enabled", "settle", "start", "start_after_cell", "wait"]

# (module, attribute): the attribute makes a lazy package (diffusers, transformers) import the
# submodule that defines it. The loader and the components of the SD-style pipelines most runs use,
# the launcher that forks the workers, and nbdist's worker side (forked workers run it).
STEPS: tuple[tuple[str, str | None], ...] = (
    ("torch", None),
    ("diffusers", "DiffusionPipeline"),
    ("diffusers", "AutoencoderKL"),
    ("diffusers", "UNet2DConditionModel"),
    ("transformers", "CLIPTextModel"),
    ("transformers", "CLIPTokenizer"),
    ("accelerate", "notebook_launcher"),
    ("torch.distributed.launcher.api", None),
    ("nbdist.worker", None),
)

PHASE = "importing torch and diffusers…"

_lock = threading.Lock()
_thread: threading.Thread | None = None
_error: BaseException | None = None
_done = False
_seconds: float | None = None  # how long the background import took (for the benchmark's notes)


def enabled() -> bool:
    """Background import wanted: on unless ``NBDIST_WARM_IMPORTS=0``."""
    return os.environ.get("NBDIST_WARM_IMPORTS", "1").strip().lower() not in ("0", "off", "no", "false")


def start() -> bool:
    """Start the background import once per process; False when off, already started, or nothing to do."""
    global _thread
    with _lock:
        if not enabled() or _thread is not None or _done:
            return False
        _thread = threading.Thread(target=_background, name="nbdist-warm-imports", daemon=True)
        _thread.start()
        return True


START_DELAY = 0.1  # seconds: the cell's reply and idle status go out first (they need the GIL the imports hold)


def start_after_cell(ipython: Any) -> None:
    """Start the background import when the current cell (the one running ``%load_ext nbdist``) is over.

    Not at once: that cell's next lines are often ``import torch`` / ``from diffusers import ...``, and
    two threads importing the same lazy packages fail ("cannot import name 'AutoModel' from
    'transformers'"). Later cells wait for the thread (``settle``).
    """

    def after(result: object = None) -> None:
        ipython.events.unregister("post_run_cell", after)
        if start():
            ipython.events.register("pre_run_cell", settle)  # no cell races the background import

    if enabled() and _thread is None and not _done:
        ipython.events.register("post_run_cell", after)


def _background() -> None:
    global _error, _done, _seconds
    time.sleep(START_DELAY)
    began = time.monotonic()
    try:
        _import_all()
    except BaseException as exc:  # kept for the cell that needs the modules: a thread's error is otherwise lost
        _error = exc
    else:
        _done = True
        _seconds = time.monotonic() - began


def _import_all() -> None:
    for module, attribute in STEPS:
        loaded = importlib.import_module(module)
        if attribute is not None:
            getattr(loaded, attribute)


def settle(info: object = None) -> None:
    """Return once the background import is over (an IPython ``pre_run_cell`` hook; errors stay for ``wait``).

    Every cell waits for it before running: a cell that imports torch, diffusers or transformers itself
    while this thread does would race it, and lazy packages (transformers' ``_LazyModule``) and import
    locks taken in opposite orders by the two threads then fail ("cannot import name 'AutoModel' from
    'transformers'", "partially initialized module"). The wait costs nothing once the thread is done,
    and a cell run at once after ``%load_ext`` waits no longer than importing would have taken it. A
    ``%%distgen`` cell does not wait here: the magic shows its header at once and waits itself (``wait``)
    before it imports anything heavy.
    """
    if str(getattr(info, "raw_cell", "") or "").lstrip().startswith(("%%distgen", "%distgen")):
        return
    thread = _thread
    while thread is not None and thread.is_alive():
        thread.join(0.1)


def wait(import_here: bool = True) -> None:
    """Return once the background import is over; with ``import_here``, once the modules are imported.

    Says ``importing torch and diffusers…`` (``phases.report``) while that takes a while. The join is
    in short slices so that an interrupt (the stop button) still reaches the cell. After a background
    failure the modules are imported here, in the foreground. ``import_here=False`` only waits for the
    thread: what the pool needs before it forks, when the run loads nothing in the kernel.
    """
    global _done, _error
    thread = _thread
    if thread is not None and thread.is_alive():
        phases.report(PHASE)
        while thread.is_alive():
            thread.join(0.1)
    with _lock:
        _error = None  # imported again below, in the foreground: a lasting error shows there as itself
    if _done or not import_here:
        return
    if "diffusers.pipelines.pipeline_utils" not in sys.modules:  # the slow part still ahead: say so
        phases.report(PHASE)
    _import_all()
    _done = True
