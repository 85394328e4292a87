#!/usr/bin/env bash
# nbdist's GPU check, in one command, for a lent GPU machine: `bash scripts/gpu_check.sh`.
#
# Why it is built this way: such a machine has python3 with CUDA torch and accelerate but no diffusers,
# no Jupyter stack and no network, and device time is scarce (15 minutes per session, machine start
# included). So the wheels come with the tree (gpu-wheels/, made here by scripts/gpu_wheels.sh and
# named in the device tool's `carry`), they are installed with --target into a scratch folder put first
# on PYTHONPATH (a venv made from that python would not see its torch when the python is itself a venv),
# and every stage runs under `timeout`, sized so the whole check ends within GPU_CHECK_BUDGET_S (450 s)
# even when a stage hangs. A stage that fails, times out or is not reached is written in the report,
# never skipped silently, and the script then exits 1.
#
# Stages: the machine (nvidia-smi, torch, CUDA), install, bad-fork (workers forked after diffusers was
# imported in the kernel make their images on the GPUs: tests/test_gpu_fork.py), imports, a kernel running a tiny %%distgen
# on a CPU worker, `pytest -m gpu` over the test files that hold gpu-marked tests, and
# benchmarks/gpu_bench.py on an SD1.5-shaped random model (built in the background meanwhile). The report is benchmarks/GPU.md (GPU_CHECK_REPORT to change),
# copied with every stage's log to $OUT when set (the device tool brings $OUT back).
#
# On a machine without CUDA it stops with a failed report, unless NBDIST_GPU_CHECK_ALLOW_CPU=1: then
# it is a dry run of the same steps (gpu tests skip, the benchmark runs --smoke), to catch a broken
# script before device time is spent on it. NBDIST_GPU_CHECK_PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-450}
RESERVE=20  # kept back from every stage for `timeout -k`'s grace and the report
REPORT=${GPU_CHECK_REPORT:-benchmarks/GPU.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nbdist-gpu-check.XXXXXX")
LOGS=$WORK/logs
SITE=$WORK/site
mkdir -p "$LOGS"
ROWS=()
FAILED=()

say() { echo "gpu_check [$(( $(date +%s) - T0 )) s]: $*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# stage NAME LIMIT CMD...: run CMD under `timeout` (LIMIT, or less when the budget is short), its
# output to $LOGS/NAME.log, then to the terminal; one row in the report's stage table.
stage() {
  local name=$1 limit=$2 avail rc start took result
  shift 2
  avail=$(( $(left) - RESERVE ))
  (( limit > avail )) && limit=$avail
  if (( limit < 5 )); then
    ROWS+=("| $name | NOT RUN: out of time | 0 |")
    FAILED+=("$name")
    echo "not run: out of time" >"$LOGS/$name.log"
    say "$name: not run (out of time)"
    return 1
  fi
  say "$name (up to $limit s) ..."
  start=$(date +%s)
  # The stage's functions and variables are exported: `timeout` runs a new bash that calls them. The
  # output goes to a file, not through a pipe: a process the stage leaves behind (a kernel in its own
  # session, out of timeout's reach) could hold a pipe open and stall the script past its budget.
  timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" >"$LOGS/$name.log" 2>&1 </dev/null
  rc=$?
  cat "$LOGS/$name.log"
  took=$(( $(date +%s) - start ))
  case $rc in
    0) result="ok" ;;
    124|137) result="TIMED OUT after $limit s" ;;
    *) result="FAILED (exit $rc)" ;;
  esac
  [ "$rc" = 0 ] || FAILED+=("$name")
  ROWS+=("| $name | $result | $took |")
  say "$name: $result in $took s"
  return "$rc"
}

# --- the interpreter: the one with torch (on the GPU machine a plain python3) ---------------------
PY=${NBDIST_GPU_CHECK_PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3 python .venv/bin/python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      PY=$(command -v "$candidate")
      break
    fi
  done
fi
MODE=gpu

machine() {
  echo "## nvidia-smi"
  if command -v nvidia-smi >/dev/null; then timeout 20 nvidia-smi; else echo "nvidia-smi: not found"; fi
  echo "## python"
  if [ -z "$PY" ]; then
    echo "no python with torch found (tried python3, python, .venv/bin/python; set NBDIST_GPU_CHECK_PYTHON)"
    return 2
  fi
  "$PY" - <<'EOF'
import os, platform, sys
import torch
print(f"python {platform.python_version()} at {sys.executable}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"cores {os.cpu_count()}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
else:
    print("torch sees no CUDA device")
    sys.exit(3)
EOF
}

export PY SITE WORK BUDGET T0 RESERVE
export -f left machine
stage machine 60 machine
if ! grep -q "^cuda:0 " "$LOGS/machine.log"; then
  if [ "${NBDIST_GPU_CHECK_ALLOW_CPU:-0}" = 1 ] && [ -n "$PY" ]; then
    # A dry run is no failure of the machine stage: there is no GPU to find.
    MODE=cpu
    [ "${FAILED[-1]:-}" = machine ] && unset 'FAILED[-1]'
    ROWS[-1]="| machine | no CUDA: CPU dry run (NBDIST_GPU_CHECK_ALLOW_CPU=1) | - |"
  else
    MODE=none
  fi
fi
export MODE

# --- install ----------------------------------------------------------------------------------
install_wheels() {
  if ! ls gpu-wheels/*.whl >/dev/null 2>&1; then
    echo "gpu-wheels/ is missing or empty: run scripts/gpu_wheels.sh where PyPI answers, and name"
    echo "gpu-wheels in the device tool's carry"
    return 2
  fi
  # One name per distribution; pip picks the wheel that fits this python from the folder.
  local names
  names=$(ls gpu-wheels/*.whl | sed 's|.*/||; s|-.*||' | sort -u)
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" --find-links gpu-wheels $names || return
  echo "installed $(echo "$names" | wc -w) distributions into $SITE"
}

imports() {
  "$PY" - <<'EOF'
import importlib, importlib.metadata as md, sys
failed = []
for module, dist in [("torch", "torch"), ("accelerate", "accelerate"), ("diffusers", "diffusers"),
                     ("transformers", "transformers"), ("huggingface_hub", "huggingface_hub"),
                     ("tokenizers", "tokenizers"), ("safetensors", "safetensors"), ("PIL", "pillow"),
                     ("psutil", "psutil"), ("IPython", "ipython"), ("ipykernel", "ipykernel"),
                     ("jupyter_client", "jupyter_client"), ("ipywidgets", "ipywidgets"),
                     ("anywidget", "anywidget"), ("nbformat", "nbformat"), ("pytest", "pytest"),
                     ("pytest_timeout", "pytest-timeout"), ("nbdist", None)]:
    try:
        m = importlib.import_module(module)
        version = md.version(dist) if dist else "(source tree)"
        print(f"{module:16} {version:14} {m.__file__}")
    except Exception as e:
        failed.append(module)
        print(f"{module:16} FAILED: {type(e).__name__}: {e}")
try:
    from diffusers import StableDiffusionPipeline  # noqa: F401 - diffusers imports lazily
    import nbdist.notebook.magic  # noqa: F401 - what %load_ext nbdist loads
except Exception as e:
    failed.append("diffusers pipelines / nbdist magic")
    print(f"FAILED: {type(e).__name__}: {e}")
sys.exit(1 if failed else 0)
EOF
}

# A real kernel with the carried stack: %load_ext nbdist and one tiny %%distgen on a CPU worker (the
# gallery's widgets included), so a package missing from the wheels shows here, named, and not as a
# confusing failure inside the gpu tests.
kernel() {
  "$PY" - <<'EOF'
import sys
sys.path.insert(0, "tests")
from kernel import Kernel
with Kernel() as k:
    for code in [
        "%load_ext nbdist",
        "import sys, IPython, ipykernel; from nbdist.tiny import ensure_tiny_pipeline; m = str(ensure_tiny_pipeline())\n"
        "print('kernel:', sys.executable, 'IPython', IPython.__version__, 'ipykernel', ipykernel.__version__)",
        "%%distgen --model {m} -n 1 --device cpu --steps 2 --seed 0 -o res\na dog",
        "assert res.complete, res.summary(); print(res.summary())",
    ]:
        ex = k.execute(code, timeout=60)
        print(ex.stream().strip())
        if ex.error:
            print(f"FAILED: {code.splitlines()[0]}: {ex.error['ename']}: {ex.error['evalue']}")
            print("\n".join(ex.error.get("traceback", []))[-3000:])
            sys.exit(1)
EOF
}

export -f install_wheels imports kernel
if [ "$MODE" != none ]; then
  stage install 120 install_wheels
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  export NBDIST_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
fi

# --- first: do forked workers get the GPU after diffusers was imported in the kernel? (issue 26) ----
bad_fork() {
  "$PY" -m pytest -m gpu -p no:cacheprovider -o addopts="" -rA -v --timeout 100 tests/test_gpu_fork.py
}
export -f bad_fork
if [ "$MODE" != none ]; then
  stage bad-fork 120 bad_fork
fi

# --- the model for the benchmark, built on the CPU while the checks below run --------------------
BUILD_PID=""
MODEL=$WORK/sd15-random
if [ "$MODE" = gpu ]; then
  build_limit=$(( $(left) - RESERVE - 60 ))
  say "building the SD1.5-shaped model in the background (up to $build_limit s)"
  build_start=$(date +%s)
  timeout -k 10 "$build_limit" "$PY" benchmarks/gpu_bench.py --build-only --model "$MODEL" \
    >"$LOGS/build-model.log" 2>&1 &
  BUILD_PID=$!
fi

if [ "$MODE" != none ]; then
  stage imports 60 imports
  stage kernel 90 kernel
fi

# --- gpu tests --------------------------------------------------------------------------------
gpu_tests() {
  local files
  files=$(grep -l "pytest.mark.gpu" tests/test_*.py | grep -v test_gpu_fork.py)  # run first, as bad-fork
  if [ -z "$files" ]; then
    echo "no test file holds a pytest.mark.gpu test"
    return 2
  fi
  echo "files: $files"
  # shellcheck disable=SC2086
  "$PY" -m pytest -m gpu -p no:cacheprovider -o addopts="" -rA -v --timeout 150 $files
}
export -f gpu_tests
if [ "$MODE" != none ]; then
  stage gpu-tests 200 gpu_tests
fi

# --- benchmark --------------------------------------------------------------------------------
if [ -n "$BUILD_PID" ]; then
  wait "$BUILD_PID"
  rc=$?
  took=$(( $(date +%s) - build_start ))
  cat "$LOGS/build-model.log"
  case $rc in
    0) ROWS+=("| build-model (background) | ok | $took |") ;;
    124|137) ROWS+=("| build-model (background) | TIMED OUT | $took |"); FAILED+=("build-model") ;;
    *) ROWS+=("| build-model (background) | FAILED (exit $rc) | $took |"); FAILED+=("build-model") ;;
  esac
fi
bench() {
  local budget=$(( $(left) - RESERVE - 15 ))
  local flags=(--model "$MODEL")
  [ "$MODE" = cpu ] && flags=(--smoke)
  "$PY" benchmarks/gpu_bench.py "${flags[@]}" --budget-s "$budget" --report "$WORK/bench.md"
}
export MODEL
export -f bench
if [ "$MODE" != none ]; then
  stage benchmark 600 bench
fi

# --- report -----------------------------------------------------------------------------------
total=$(( $(date +%s) - T0 ))
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown (no git here)")
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit + uncommitted changes"
{
  echo "# nbdist GPU check"
  echo
  case $MODE in
    gpu) echo "On $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit: \`bash scripts/gpu_check.sh\`, ${total} s." ;;
    cpu) echo "**CPU dry run** (NBDIST_GPU_CHECK_ALLOW_CPU=1, no CUDA): it checks the script, its numbers mean nothing." \
              "$(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, ${total} s." ;;
    none) echo "**No CUDA GPU found**: nothing was checked. $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit." ;;
  esac
  echo
  if [ ${#FAILED[@]} = 0 ]; then echo "Result: every stage passed."; else echo "Result: **FAILED: ${FAILED[*]}**"; fi
  echo
  echo "| stage | result | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## Machine"
  echo
  echo '```'
  cat "$LOGS/machine.log"
  echo '```'
  if [ -f "$LOGS/imports.log" ]; then
    echo
    echo "## Packages (the first on PYTHONPATH wins: $SITE holds the carried wheels)"
    echo
    echo '```'
    cat "$LOGS/imports.log"
    echo '```'
  fi
  if [ -f "$LOGS/gpu-tests.log" ]; then
    echo
    echo "## \`pytest -m gpu\`"
    echo
    echo '```'
    grep -E "^(tests/|PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS|=+ .*(passed|failed|skipped|error|deselected|no tests))" \
      "$LOGS/gpu-tests.log" | grep -v "^tests/.*\.py$" | tail -n 40
    echo '```'
  fi
  echo
  if [ -s "$WORK/bench.md" ]; then
    cat "$WORK/bench.md"
  else
    echo "## Benchmark: no results (see the benchmark stage above)"
  fi
  for name in "${FAILED[@]}"; do
    log="$LOGS/$name.log"
    [ -f "$log" ] || continue
    echo
    echo "## Log of the failed stage: $name (last 60 lines)"
    echo
    echo '```'
    tail -n 60 "$log"
    echo '```'
  done
} >"$WORK/GPU.md"
mkdir -p "$(dirname "$REPORT")"
cp "$WORK/GPU.md" "$REPORT"
if [ -n "${OUT:-}" ]; then
  cp "$WORK/GPU.md" "$OUT/GPU.md"
  for f in "$LOGS"/*.log; do echo "===== $(basename "$f")"; cat "$f"; done >"$OUT/gpu_check_logs.txt"
fi
echo
cat "$WORK/GPU.md"
say "report written to $REPORT${OUT:+ and $OUT/GPU.md}; ${total} s"
# The installed packages and the 2 GB model; GPU_CHECK_KEEP=1 keeps them for a look.
[ "${GPU_CHECK_KEEP:-0}" = 1 ] || rm -rf "$WORK"
[ ${#FAILED[@]} = 0 ]
