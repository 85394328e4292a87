"""Fresh kernels in a row, each with the most common first cell (issue 26): how many fail?

Cell 1 ``%load_ext nbdist`` / ``import torch`` / ``from diffusers import StableDiffusionPipeline`` (plus
``import transformers``), cell 2 a pipeline loaded in the kernel, cell 3 ``%%distgen --pipe p``. The
background import of ``%load_ext`` used to race cell 1's imports and fail cell 3 (4 kernels in 4).

    .venv/bin/python benchmarks/first_cell_imports.py --kernels 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kernel import Kernel

CELLS = [
    "%load_ext nbdist\nimport torch\nimport transformers\nfrom diffusers import StableDiffusionPipeline",
    "import nbdist\np = StableDiffusionPipeline.from_pretrained(nbdist.demo_model())",
    "%%distgen --pipe p -n 1 --steps 2 --seed 0 --no-save -o res\na red circle",
    "assert len(res.images) == 1",
]


def one_kernel() -> str | None:
    """None if every cell ran, else the first error in one line."""
    with tempfile.TemporaryDirectory() as folder, Kernel(cwd=folder) as k:
        for cell in CELLS:
            ex = k.execute(cell)
            if ex.error is not None:
                return f"{cell.splitlines()[0]}: {ex.error['ename']}: {ex.error['evalue'][:200]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=int, default=20)
    args = parser.parse_args()
    failures = []
    began = time.monotonic()
    for i in range(args.kernels):
        error = one_kernel()
        print(f"kernel {i + 1}: {'ok' if error is None else error}", flush=True)
        failures += [error] if error else []
    took = time.monotonic() - began
    print(f"{len(failures)} of {args.kernels} kernels failed ({took:.0f} s, python {sys.executable})")


if __name__ == "__main__":
    main()
