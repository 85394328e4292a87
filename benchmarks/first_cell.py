"""The quickstart's first ``%%distgen`` in a fresh kernel, with and without the background import.

Each repetition starts a new kernel and runs the quickstart's cells as a user would, back to back:
``%load_ext nbdist``, a pause (the user reading or typing; 0 s: Run All, and 3 s), the cell that names
the demo model, ``colour = "green"``, then the first ``%%distgen`` cell exactly as notebooks/quickstart.ipynb
has it. (A cell run while the background import goes on waits for it to end: see warm_imports.settle.)
Measured from that cell's execute request: the first image update reaching the client (a widget
``comm_msg`` carrying a JPEG) and the cell's end. ``NBDIST_WARM_IMPORTS=0`` in the kernel's environment
gives the baseline (today's behaviour before the warm import) in the same run, alternating with it.

    .venv/bin/python benchmarks/first_cell.py [--repeat 3] [--pauses 0,3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kernel import Kernel

ROOT = Path(__file__).resolve().parent.parent


def quickstart_cells() -> list[str]:
    """The quickstart notebook's code cells up to and including its first ``%%distgen``."""
    notebook = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    cells = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cells.append("".join(cell["source"]))
            if cells[-1].startswith("%%distgen"):
                return cells
    raise RuntimeError("notebooks/quickstart.ipynb has no %%distgen cell")


def one_run(warm: bool, pause: float) -> dict[str, float]:
    """A fresh kernel through the quickstart's first run; seconds from the distgen cell's start."""
    cells = quickstart_cells()
    env = dict(os.environ, NBDIST_WARM_IMPORTS="1" if warm else "0")
    with tempfile.TemporaryDirectory() as cwd, Kernel(cwd=cwd, env=env) as k:
        began = time.monotonic()
        load = k.execute(cells[0])
        time.sleep(pause)  # the user reads the next cell, types a prompt
        for code in cells[1:-1]:
            assert k.execute(code).error is None
        distgen_at = time.monotonic()
        ex = k.execute(cells[-1], timeout=600)
        if ex.error:
            raise RuntimeError(f"{ex.error['ename']}: {ex.error['evalue']}")
        first = ex.image_updates()[0].at
        k.execute("__import__('nbdist').shutdown()")
    # From %load_ext to the first image, less the user's pause: what Run All (or quick typing) waits in all,
    # wherever the import's time went (cells run meanwhile wait for the background import to end).
    since_load = distgen_at + first - began - pause
    return {"load_ext": load.wall, "first_image": first, "cell": ex.wall, "since_load": since_load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pauses", default="0,3", help="seconds between %%load_ext and the first %%distgen")
    args = parser.parse_args()
    pauses = [float(p) for p in args.pauses.split(",")]
    runs: dict[tuple[float, bool], list[dict[str, float]]] = {(p, w): [] for p in pauses for w in (False, True)}
    for _ in range(args.repeat):
        for pause in pauses:
            for warm in (False, True):  # alternating: a busy spell on the machine hits both alike
                runs[pause, warm].append(one_run(warm, pause))
    print(f"quickstart first cell, {args.repeat} fresh kernels each, medians (s); ratio = warm / off")
    print(
        "| pause | warm import | %load_ext | first image | cell | first image ratio | "
        "%load_ext → first image, less the pause | all first-image times |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for pause in pauses:
        base = statistics.median(r["first_image"] for r in runs[pause, False])
        for warm in (False, True):
            rows = runs[pause, warm]
            keys = ("load_ext", "first_image", "cell", "since_load")
            med = {key: statistics.median(r[key] for r in rows) for key in keys}
            ratio = med["first_image"] / base
            every = ", ".join(f"{r['first_image']:.2f}" for r in rows)
            print(
                f"| {pause:g} s | {'on' if warm else 'off'} | {med['load_ext']:.2f} | {med['first_image']:.2f} | "
                f"{med['cell']:.2f} | {ratio:.2f} | {med['since_load']:.2f} | {every} |"
            )


if __name__ == "__main__":
    main()
