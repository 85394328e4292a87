"""``nbdist.generate``: the plain Python API under the magic and the CLI.

One call: plan (check everything, load or reuse the pipeline in this process on the CPU), hand the run
to the warm pool (which forks the workers the first time and reuses them after), and wait for the
``GenerationResult``, partial if the run was interrupted or a worker failed. With ``background=True``
it returns a ``RunHandle`` at once instead.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .. import phases, warm_imports
from ..options import GenerateOptions
from ..pipelines import resolve_model
from .planning.plan import make_options, plan_run
from .planning.prompt_check import truncation_warning
from .pool.run import RunHandle
from .pool.warm_pool import PoolStatus, current_status, shutdown_pool, the_pool
from .results.actions import run_with
from .results.observer import RunObserver
from .results.previews import PreviewCallback, wants_previews
from .results.result import GenerationResult

__all__ = ["INTERRUPT_WAIT", "generate", "shutdown", "status", "wait_interruptibly"]

INTERRUPT_WAIT = 0.9  # seconds an interrupted wait gives the workers to answer before it ends anyway


def generate(
    model_or_pipe: Any,
    prompts: Sequence[str],
    *,
    options: GenerateOptions | None = None,
    observers: Sequence[RunObserver] | None = None,
    background: bool = False,
    on_preview: Callable[[int, int, Any], object] | None = None,
    **overrides: Any,
) -> Any:
    """Generate images for ``prompts`` on every GPU (or several CPU workers) and return them.

    ``model_or_pipe`` is a hub id, a local folder saved with ``save_pretrained``, or a diffusers
    pipeline object already loaded. Options are ``GenerateOptions`` fields, e.g. ``steps=30, seed=0,
    num_processes=2, save_dir="out"``. Observers (the notebook gallery, a progress line) see every
    worker message as it arrives; without any, progress goes to stderr as one line. Bad input raises
    ``NbdistUsageError`` before anything starts.

    The workers stay up after the call (``nbdist.status()``, ``nbdist.shutdown()``): the next call
    with the same model, dtype, device and ``-n`` starts at once. ``background=True`` returns a
    ``RunHandle`` (records so far, ``done``, ``wait()``, ``cancel()``) instead of waiting.

    ``on_preview=fn`` calls ``fn(index, step, image)`` in this process for every preview the workers
    make while image ``index`` denoises (a ~96 px PIL image, ``preview="auto"``; see ``--preview``).
    """
    started = time.monotonic()  # the totals count from here: the kernel's imports and load are the user's wait too
    opts = make_options(options, overrides)
    prompts = list(prompts)
    if isinstance(model_or_pipe, str):
        model_or_pipe = resolve_model(model_or_pipe)  # "demo": the shipped demo model, no hub lookup
    observers, opts = _with_previews(_default_observers(opts) if observers is None else observers, opts, on_preview)
    report = _phase_reporter(observers)
    with phases.reporting(report):
        plan = plan_run(model_or_pipe, prompts, opts)
        warm_imports.wait(import_here=False)  # no fork while the background import holds import locks
    plan.info = replace(plan.info, started=started)
    for line in [*plan.notes, truncation_warning(plan.pipe, prompts, plan.options.prompt_syntax)]:
        if line:
            print(line, file=sys.stderr)
    pool = the_pool()
    fresh = not pool.status().pids
    handle, reason = pool.submit(plan, list(observers))
    if reason:
        print(reason, file=sys.stderr)
    if report is not None and (fresh or reason):  # the workers' own lines follow ("loading the pipeline…")
        report(f"starting {plan.num_processes} worker{'s' if plan.num_processes != 1 else ''}")
    if background:
        return handle
    return wait_interruptibly(handle)


def _with_previews(
    observers: Sequence[RunObserver], options: GenerateOptions, on_preview: Callable[..., object] | None
) -> tuple[list[RunObserver], GenerateOptions]:
    """``on_preview`` as one more observer; with no observer that shows previews the workers make none."""
    observers = [*observers, *([PreviewCallback(on_preview)] if on_preview is not None else [])]
    if not wants_previews(observers) and options.preview != "off":
        options = options.with_(preview="off")
    return observers, options


def _phase_reporter(observers: Sequence[RunObserver]) -> Callable[[str], None] | None:
    """Pass a phase ("importing torch…") to every observer that shows them (``on_phase``); None if none does.

    A failing observer must not fail the run: its error is said once, like ``Fanout`` does.
    """
    listeners = [(type(o).__name__, f) for o in observers if (f := getattr(o, "on_phase", None)) is not None]
    if not listeners:
        return None
    failed: set[str] = set()

    def report(text: str) -> None:
        for name, listener in listeners:
            try:
                listener(text)
            except Exception as exc:
                if name not in failed:
                    print(f"nbdist: {name} failed: {exc!r}", file=sys.stderr)
                failed.add(name)

    return report


def _default_observers(options: GenerateOptions) -> list[RunObserver]:
    """A progress line on stderr for scripts and terminal IPython; one status line in a Jupyter kernel.

    In a kernel the cell's value (the result's static gallery) shows the images once the call returns,
    and ``%%distgen`` is the way to a live gallery; a terminal progress line (``\\r``, ANSI) would pile
    up in the cell, but a blank cell for the whole run says nothing: one text line updated in place.
    """
    if "ipykernel" in sys.modules:
        from IPython import get_ipython

        if type(get_ipython()).__name__ == "ZMQInteractiveShell":
            from .output.text_status import TextStatus

            return [TextStatus()]
    from .output.terminal import TerminalProgress

    return [TerminalProgress(summary=True, files=bool(options.save_dir))]


def wait_interruptibly(handle: RunHandle) -> GenerationResult:
    """Wait for the run; an interrupt (the stop button, Ctrl-C) cancels it and returns what was finished.

    Every interrupt ends the wait within ``INTERRUPT_WAIT`` s: the first cancels the run and waits that
    long for the workers to answer (one denoising step, usually); if they have not, or on a second
    interrupt, the wait ends with the images so far while the pool ends the run in the background (the
    gallery and ``-o`` then get its full result). A pool thread that is gone ends the wait at once.
    """
    cancelled_at: float | None = None
    told = False
    while not handle.done and handle.pool_alive:
        try:
            if cancelled_at is not None:
                if not told:
                    handle.cancel()  # in the loop: an interrupt landing inside it is caught like any other
                    told = True
                if time.monotonic() - cancelled_at > INTERRUPT_WAIT:
                    break
            handle.wait_briefly(0.05 if cancelled_at is not None else 0.1)
        except KeyboardInterrupt:
            if cancelled_at is not None:
                break
            cancelled_at = time.monotonic()
    if cancelled_at is not None and not told:
        with contextlib.suppress(KeyboardInterrupt):
            handle.cancel()
    if not handle.done:
        why = "stopped waiting for the workers" if cancelled_at is not None else "the pool's thread is gone"
        print(f"nbdist: {why}; an image they still finish joins the gallery", file=sys.stderr)
    return handle.snapshot()


def shutdown() -> bool:
    """Stop the warm workers and free their memory (GPU memory included); True if there were any.

    The next ``generate`` starts new ones. Runs still queued or going are cancelled first, keeping
    their finished images.
    """
    return shutdown_pool()


def status() -> PoolStatus:
    """The warm workers: model, devices, pids, idle time and idle timeout."""
    return current_status()


run_with(generate)  # res[i].vary() and .refine() start their runs with it (results/actions.py)
