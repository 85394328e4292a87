#!/usr/bin/env bash
# Set up nbdist on a fresh machine: a virtual environment in .venv with the project and its extras.
# Torch goes first, pinned to the CPU build when there is no NVIDIA driver: a plain "torch"
# requirement resolved from scratch would pull a CUDA build of several GB.
# Usage: scripts/setup.sh [EXTRAS]   (EXTRAS e.g. "test" or "notebook"; default: notebook)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-notebook}"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -e /proc/driver/nvidia/version ] || command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install -q torch
  else
    .venv/bin/pip install -q "torch==2.13.0"  # a CPU build where the machine provides one
  fi
fi
# compat: the editable install is a plain path entry for the checkout (a .pth), not setuptools' import
# hook. The hook runs after Python's path search, so a folder named "nbdist" in the current directory
# (this checkout cloned as ./nbdist, Jupyter started from its parent) would be imported instead, as an
# empty namespace package: "The nbdist module is not an IPython extension". tests/test_install.py.
# setuptools calls compat "transitional" and prints a 12-line banner on every install; it still ships it
# (84.x), and tests/test_install.py shows the day it stops working. The banner alone is silenced.
PYTHONWARNINGS="ignore:Compat editable installs" \
  .venv/bin/pip install -q -e ".[${extras}]" --config-settings editable_mode=compat
echo "nbdist is installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
