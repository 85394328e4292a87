#!/usr/bin/env bash
# Download, here where PyPI answers, the wheels a lent GPU machine needs to run nbdist's GPU check
# (scripts/gpu_check.sh) into gpu-wheels/ (git-ignored; name it in the device tool's `carry`).
#
# Why this list: the GPU machine has python3 with CUDA torch and accelerate and no package index at
# all, so everything else nbdist, its `gpu` tests and benchmarks/gpu_bench.py import must travel with
# the working tree, which is limited to 64 MiB in all. So:
#   - no torch, accelerate, triton or nvidia-* wheels (the machine's CUDA builds must stay), and none
#     of the packages torch and accelerate themselves require (numpy, packaging, pyyaml, filelock,
#     fsspec, jinja2, markupsafe, sympy, mpmath, networkx, typing-extensions, setuptools): wherever
#     torch and accelerate import, those are installed;
#   - everything else in the import closure of diffusers, transformers, the kernel stack (ipykernel,
#     jupyter_client, ipywidgets, anywidget), nbformat and pytest, at the versions in .venv, so the
#     GPU run tests the same code as this machine's tests do;
#   - each package for CPython 3.10, 3.11 and 3.12 on manylinux x86_64 (the GPU machine's python is
#     not known for sure here; 3.12 was seen there); a pure-python or abi3 wheel is one file for all.
#     A version whose pin needs a newer Python (diffusers 0.42 needs 3.11) is skipped, and said so.
# The size is printed at the end: it must leave room for the rest of the tree (~50 MiB at most).
#
#   scripts/gpu_wheels.sh            # versions from .venv (scripts/setup.sh test made it)
#   GPU_WHEELS_PYTHONS="3.12" scripts/gpu_wheels.sh   # fewer interpreters, smaller folder
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=gpu-wheels
VENV_PY=${VENV_PY:-.venv/bin/python}
PYTHONS=${GPU_WHEELS_PYTHONS:-"3.10 3.11 3.12"}
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-50}

PACKAGES=(
  # models and their loaders
  diffusers transformers tokenizers safetensors huggingface_hub regex
  requests urllib3 certifi charset-normalizer idna tqdm importlib-metadata zipp lazy-importer
  httpx2 httpcore2 h11 anyio truststore
  pillow psutil
  # not needed, but diffusers imports it whenever it is installed (GPU images often have one): carry
  # the version the tests here run with rather than meet whatever the machine has
  peft
  # the kernel the gpu tests drive, and the notebook gallery nbdist imports in it
  ipykernel ipython ipython-pygments-lexers pygments matplotlib-inline pexpect ptyprocess
  stack-data asttokens executing pure-eval traitlets comm
  nest-asyncio2 pyzmq tornado jupyter-client jupyter-core platformdirs python-dateutil six tzdata
  ipywidgets anywidget psygnal
  nbformat fastjsonschema jsonschema jsonschema-specifications referencing rpds-py attrs
  # the test runner
  pytest pytest-timeout pluggy iniconfig
)
# Left out although their installers name them, because nothing the check runs imports them (read
# from sys.modules of a kernel that ran %%distgen and of the test process, in .venv) and together
# they are ~25 MiB of the 64:
#   hf-xet (hub downloads through Xet storage: the GPU machine has no network);
#   typer, click, rich, pydantic, pydantic-core, ... (the `transformers` / `hf` command lines);
#   debugpy (ipykernel's debugger, optional there), jedi and parso (IPython's completion, optional),
#   prompt-toolkit and wcwidth (IPython's terminal, not its kernel);
#   widgetsnbextension and jupyterlab-widgets (JavaScript for a browser front end, never imported).

if [ ! -x "$VENV_PY" ]; then
  echo "gpu_wheels: $VENV_PY not found; run scripts/setup.sh test first (the versions come from it)" >&2
  exit 1
fi

# name==version for each package, as installed in .venv; a package missing there is an error (the
# list above is the import closure measured in .venv: a missing one means the list went stale).
mapfile -t PINS < <("$VENV_PY" - "${PACKAGES[@]}" <<'EOF'
import importlib.metadata as md
import sys

missing = []
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit("gpu_wheels: not installed in .venv: " + " ".join(missing))
EOF
)

PLATFORMS=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 39); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done

mkdir -p "$DEST"
DONE=()
for py in $PYTHONS; do
  echo "gpu_wheels: CPython $py ..."
  args=(download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$py"
        "${PLATFORMS[@]}" -d "$DEST")
  if "$VENV_PY" -m pip "${args[@]}" "${PINS[@]}" 2>"$DEST/.pip-$py.log"; then
    DONE+=("$py")
    continue
  fi
  # One call for speed; on failure, one per package, to name the one without a wheel. A pinned
  # version that needs a newer Python (diffusers 0.42 needs 3.11) drops that Python, not the run.
  blocked=""
  for pin in "${PINS[@]}"; do
    if ! "$VENV_PY" -m pip "${args[@]}" "$pin" 2>"$DEST/.pip-$py.log"; then
      blocked="$pin"
      break
    fi
  done
  if [ -z "$blocked" ]; then
    DONE+=("$py")  # the batch failed on a network hiccup; one by one it went through
    continue
  fi
  if ! grep -q "require a different python version" "$DEST/.pip-$py.log"; then
    cat "$DEST/.pip-$py.log" >&2
    echo "gpu_wheels: no wheel of $blocked for CPython $py" >&2
    exit 1
  fi
  echo "gpu_wheels: skipping CPython $py: $blocked does not support it"
  rm -f "$DEST"/*-cp"${py/./}"-*.whl
done
rm -f "$DEST"/.pip-*.log
if [ ${#DONE[@]} = 0 ]; then
  echo "gpu_wheels: no Python version has every wheel" >&2
  exit 1
fi

# Wheels of other versions (an older run, before .venv was upgraded) would make two versions of one
# package, which stops the install there: keep only the pinned ones.
"$VENV_PY" - "$DEST" "${PINS[@]}" <<'EOF'
import re
import sys
from pathlib import Path

dest, pins = Path(sys.argv[1]), sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()  # noqa: E731 - wheel file names normalise like this
wanted = {norm(n): v for n, v in (p.split("==") for p in pins)}
for wheel in dest.glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    if wanted.get(norm(name)) != version:
        print(f"gpu_wheels: removing {wheel.name} (not a pinned version)")
        wheel.unlink()
EOF

total=$(du -sb "$DEST" | cut -f1)
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(awk "BEGIN { printf \"%.1f\", $total / 1048576 }") MiB" \
  "in $DEST/, for CPython ${DONE[*]}"
if (( total > LIMIT_MIB * 1048576 )); then
  echo "gpu_wheels: over ${LIMIT_MIB} MiB: the tree carried to the GPU machine may not fit 64 MiB" >&2
  exit 1
fi
