"""Where a run's images go when no ``--save-dir`` is given: a new folder per run under ``nbdist-runs/``.

Like A1111's ``outputs/``: next to the notebook (the kernel's working folder), one folder per run named
for when it started and what it asked for, so a listing reads as a history. ``NBDIST_SAVE_DIR`` moves
the whole ``nbdist-runs`` tree; a tree that cannot be written (a read-only checkout, a notebook server
started in ``/``) falls back to the cache folder with a one-line note rather than failing the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from ...errors import NbdistUsageError
from ...image_files import slug
from ...options import check_writable_dir

__all__ = ["RUNS_FOLDER", "cache_runs_root", "new_run_folder", "run_folder_name", "runs_root"]

RUNS_FOLDER = "nbdist-runs"
FIRST_WORDS = 5  # of the first prompt, in the folder's name


def runs_root() -> Path:
    """``$NBDIST_SAVE_DIR``, else ``nbdist-runs`` in the working folder (a notebook's kernel runs next to it)."""
    return Path(os.environ.get("NBDIST_SAVE_DIR") or Path.cwd() / RUNS_FOLDER)


def cache_runs_root() -> Path:
    """The fallback: ``runs`` in nbdist's cache folder (``$NBDIST_CACHE``, else ``~/.cache/nbdist``)."""
    return Path(os.environ.get("NBDIST_CACHE") or Path.home() / ".cache" / "nbdist") / "runs"


def run_folder_name(prompts: Sequence[str], when: float | None = None) -> str:
    """``2026-11-29-213416-a-red-circle-on-a``: local date and time, then the first prompt's first words."""
    stamp = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(when))
    words = " ".join((prompts[0] if prompts else "").split()[:FIRST_WORDS])
    return f"{stamp}-{slug(words, limit=40)}"


def new_run_folder(prompts: Sequence[str]) -> tuple[Path, str | None]:
    """A fresh folder for this run, made now (so two runs never share one), and the note to show when it
    is not where it should be."""
    root, note = runs_root(), None
    try:
        check_writable_dir(root)
    except NbdistUsageError:
        fallback = cache_runs_root()
        note = f"nbdist: {str(root)!r} cannot be written: this run's images go to {str(fallback)!r}"
        root = fallback
    name = run_folder_name(prompts)
    for n in range(1, 1000):
        folder = root / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder, note
        except FileExistsError:  # another run in the same second
            continue
        except OSError as exc:
            raise NbdistUsageError(f"cannot make a folder for the run's images in {str(root)!r}: {exc}") from exc
    raise NbdistUsageError(f"too many runs named {name!r} in {str(root)!r}")
