"""Acting on one image of a run: more like it (``res[i].vary``), or from it (``res[i].refine``).

Each starts an ordinary run with the image's own settings (``cell.image_options``: its seed, its sweep
values) and the same model and worker count, so the warm workers take it (same processes, no new
weights) and it is reproducible like any run: its ``res[j].cell`` says how. In a notebook with
``%load_ext nbdist`` its images fill a live gallery in the output of the cell that called it, as the
magic's do; elsewhere the run reports like ``nbdist.generate``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from .cell import image_options

__all__ = ["refine", "run_with", "show_runs_with", "start_run", "vary"]

# Set by the notebook layer (``%load_ext nbdist``): the observers that draw a run in the current cell.
_live_display: Callable[[bool], list[Any] | None] | None = None
# Set by ``parent/api.py`` when it is imported: ``nbdist.generate``. Handed in rather than imported, as
# the API imports the results (a record's ``vary`` importing the API would close a circle).
_generate: Callable[..., Any] | None = None


def run_with(generate: Callable[..., Any]) -> None:
    """The function that starts runs (``nbdist.generate``)."""
    global _generate
    _generate = generate


def show_runs_with(factory: Callable[[bool], list[Any] | None] | None) -> None:
    """Who draws the runs these actions start: ``factory(background)`` gives their observers (None: the default)."""
    global _live_display
    _live_display = factory


VARIATION_SEEDS = 10_000 - 8  # a random first variation seed is below this


def vary(record: Any, n: int = 8, strength: float = 0.2, seed: int | None = None, **options: Any) -> Any:
    """``n`` variations of ``record``: its noise blended (slerp, ``strength``) with seeds ``seed .. seed+n-1``.

    A sweep of ``variation_seed``: one labelled row, every image keeping the original's seed; strength
    0 gives the original itself. ``seed`` defaults to a random one; ``background=True`` returns the handle.
    """
    from ...options import NbdistUsageError

    if not isinstance(n, int) or n < 1:
        raise NbdistUsageError(f"vary: n must be a positive integer, got {n!r}")
    # Up to four digits: each column's caption ("variation 4821") fits the narrowest column, and eight
    # seeds in ten thousand are as far from the original's noise as any others.
    start = secrets.randbelow(VARIATION_SEEDS) if seed is None else seed
    changes = {
        "variation_seed": None,
        "variation_strength": strength,
        "sweep": {"variation_seed": [start + j for j in range(n)]},
    }
    return start_run(record, [record.prompt], {**changes, **options})


def refine(record: Any, prompt: str | None = None, strength: float = 0.4, **options: Any) -> Any:
    """Image-to-image from ``record`` (its prompt unless ``prompt`` is given), with its seed and settings.

    ``strength``: how much of the denoising is redone (0.4 keeps the composition); ``upscale=2`` makes
    it a hires-fix pass. The run uses the pipeline's img2img form inside the same warm workers.
    """
    changes = {"init": record, "strength": strength, **options}
    return start_run(record, [record.prompt if prompt is None else prompt], changes)


def start_run(record: Any, prompts: Sequence[str], changes: dict[str, Any]) -> Any:
    """A run on the record's model and workers, with its settings changed by ``changes``."""
    if _generate is None:
        import nbdist  # noqa: F401 - importing the package imports the API, which hands over generate

    assert _generate is not None
    run = record.run
    background = bool(changes.pop("background", False))
    observers = changes.pop("observers", None)
    options = image_options(run.options, record.job).with_(save_dir=None, overwrite=False)
    options = options.with_(**{"variation_seed": None, "variation_strength": None, **changes})
    if observers is None and _live_display is not None:
        observers = _live_display(background)
    return _generate(run.model, list(prompts), options=options, observers=observers, background=background)
