#!/usr/bin/env bash
# A second environment with the ipykernel that Colab and Kaggle images ship (6.x, here 6.29.5): nbdist
# must install there without upgrading it, and its kernel-facing parts must work on it. Builds
# .venv-ipykernel6 (CPU torch first, then ipykernel==$IPYKERNEL_VERSION, default 6.29.5, and the
# project in one resolve, so pip fails if nbdist's requirements would move ipykernel), checks the
# installed version, then runs a small subset of the kernel tests. Extra arguments go to pytest
# (default: the subset below). Measured: 1 min 46 s from nothing with a warm pip cache, 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ipykernel6
py="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/pip" install -q "torch==2.13.0"
PYTHONWARNINGS="ignore:Compat editable installs" "$venv/bin/pip" install -q "ipykernel==${IPYKERNEL_VERSION:-6.29.5}" \
  -e . "pytest>=8" "pytest-timeout>=2.3" "jupyter_client>=8" --config-settings editable_mode=compat
"$venv/bin/python" - <<'PY'
import os

import ipykernel

want = os.environ.get("IPYKERNEL_VERSION", "6.29.5")
assert ipykernel.__version__ == want, f"ipykernel {ipykernel.__version__}, not {want}: the install moved it"
print(f"ipykernel {ipykernel.__version__} kept")
PY
if [ "$#" -eq 0 ]; then
  # What differs between ipykernel 6 and 7 is output from threads other than the cell's (the gallery
  # is updated from nbdist's pool thread; a background run updates it while other cells run): these
  # tests watch exactly that over a real kernel. About 1.5 min on 2 cores.
  set -- -q -p no:cacheprovider \
    "tests/test_magic.py::test_magic_streams_images_while_the_cell_runs" \
    "tests/test_magic.py::test_two_runs_in_one_kernel_and_a_kernel_side_partial_state" \
    "tests/test_gallery.py::test_magic_output_is_the_gallery_and_nothing_else" \
    "tests/test_pool.py::test_same_workers_across_cells" \
    "tests/test_pool.py::test_interrupt_keeps_workers_and_finished_images" \
    "tests/test_pool.py::test_background_run_while_other_cells_run"
fi
exec "$venv/bin/python" -m pytest "$@"
