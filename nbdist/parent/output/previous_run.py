"""Never mix two runs in one folder: find the files an earlier run left in a save folder.

A second run into the same folder used to keep the old PNGs, append to the old ``manifest.jsonl`` and
write an ``index.html`` showing only itself: three views of the folder that disagree. So a folder that
already holds a run is refused before anything starts (``--overwrite`` replaces that run; ``--out``
elsewhere keeps it). Only files nbdist writes count and only they are removed: a README or a notes
file the user keeps next to the images stays.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import NbdistUsageError

__all__ = ["clear_previous_run", "previous_run", "refuse_previous_run"]

# What a run writes (saving.py, index_page.py, launched.py): numbered PNGs, half-written ones, grids,
# the manifest (and under torchrun the per-rank ones a crashed run may leave) and the index page.
_RUN_FILE = re.compile(
    r"\d{5}-[a-z0-9-]+\.png(\.part)?|grid(-[a-z0-9-]+)?\.png|manifest(\.rank-\d+)?\.jsonl|index\.html"
)


def previous_run(folder: str | Path) -> list[Path]:
    """The files of an earlier run in ``folder`` (sorted); empty when there is none or no folder yet."""
    path = Path(folder)
    if not path.is_dir():
        return []
    try:
        return sorted(p for p in path.iterdir() if _RUN_FILE.fullmatch(p.name) and p.is_file())
    except OSError:
        return []


def describe(files: list[Path]) -> str:
    """``12 PNG(s), manifest.jsonl and index.html``: what the refusal says the folder holds."""
    pngs = sum(1 for f in files if f.name.endswith(".png"))
    others = [f.name for f in files if not f.name.endswith((".png", ".part"))]
    parts = [f"{pngs} PNG(s)"] if pngs else []
    parts += others[:3]
    if not parts:
        parts = [files[0].name]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def refuse_previous_run(folder: str | Path, flag: str = "--save-dir") -> None:
    """Raise the one-line ``NbdistUsageError`` when ``folder`` already holds a run."""
    files = previous_run(folder)
    if files:
        raise NbdistUsageError(
            f"{flag} {str(folder)!r} already holds a run ({describe(files)}): add --overwrite to replace it, "
            f"or choose another folder"
        )


def clear_previous_run(folder: str | Path) -> int:
    """``--overwrite``: remove the earlier run's files (nothing else) before this run writes; how many went."""
    removed = 0
    for file in previous_run(folder):
        try:
            file.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
