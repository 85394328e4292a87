#!/usr/bin/env bash
# The kernel side of a GPU machine, here: a third environment with the CUDA build of the same torch
# (what pip installs by default on Linux and what every GPU machine has) and no GPU. On that build,
# asking CUDA for its device count spoils fork for every child, and `import diffusers` asks; the CPU
# build cannot show it. tests/test_cuda_build.py builds a stand-in NVML (gcc) and nvidia-smi, so torch
# and nbdist see two GPUs, and drives real kernels through every launch path (docs/testing.md).
#
# The CUDA wheels (torch 2.13.0+cu130 with its nvidia-* and triton wheels, 2.6 GB) are not on this
# machine's local wheel folder: they come from PyPI once, pip ignoring this machine's settings
# (--isolated, the certificate kept), into a wheel folder outside the clone ($NBDIST_CUDA_WHEELS, default
# ~/.cache/nbdist/cuda-wheels) that every later run installs from without the network. Measured on
# 2 cores: ~4 min the first time, then about 2.5 min for the venv and 1.5 min of tests.
# Extra arguments go to pytest (default: the CUDA-build tests and the layout's CUDA promises).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-cuda
wheels=${NBDIST_CUDA_WHEELS:-$HOME/.cache/nbdist/cuda-wheels}
py="${PYTHON:-python3}"
cert=()
[ -f "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" ] && cert=(--cert "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}")
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
if ! "$venv/bin/python" -c "import sys, torch; sys.exit(0 if torch.backends.cuda.is_built() else 1)" 2>/dev/null; then
  if ! ls "$wheels"/torch-2.13.0-*.whl >/dev/null 2>&1; then
    mkdir -p "$wheels"
    "$venv/bin/pip" download --isolated "${cert[@]}" -q -d "$wheels" "torch==2.13.0"
  fi
  "$venv/bin/pip" install --isolated --no-index --find-links "$wheels" -q "torch==2.13.0"
fi
PYTHONWARNINGS="ignore:Compat editable installs" "$venv/bin/pip" install -q -e ".[test]" --config-settings editable_mode=compat
"$venv/bin/python" -c "import torch; assert torch.backends.cuda.is_built(), torch.__version__; print('torch', torch.__version__)"
if [ "$#" -eq 0 ]; then
  set -- -q -p no:cacheprovider tests/test_cuda_build.py \
    "tests/test_architecture.py::test_a_whole_run_leaves_cuda_uninitialised_in_the_parent" \
    "tests/test_first_run.py::test_imports_in_the_cell_that_loads_nbdist_do_not_race_the_background_import"
fi
exec "$venv/bin/python" -m pytest "$@"
