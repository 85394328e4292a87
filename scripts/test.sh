#!/usr/bin/env bash
# Install everything the tests need (the project with its test extras, Debian's Chromium for the
# browser test) and run them. Extra arguments go to pytest (both runs). The Ray tests (-m ray) run
# second, in a network namespace of their own with only loopback up (root: unshare -n), because the
# 3-node cluster they start advertises the machine's network address; NBDIST_SKIP_RAY=1 leaves them out.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is not installed (apt-get install chromium); the browser test will be skipped" >&2
  fi
fi
.venv/bin/ruff check nbdist tests benchmarks
.venv/bin/python -m pytest -m "not ray" "$@"
if [ "${NBDIST_SKIP_RAY:-0}" = 1 ]; then
  echo "NBDIST_SKIP_RAY=1: the Ray cluster tests (-m ray) were left out" >&2
else
  # exit status 5: no Ray test among the arguments given (e.g. one other test file)
  unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m pytest -m ray "$@"' sh "$@" || [ $? = 5 ]
fi
