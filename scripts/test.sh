#!/usr/bin/env bash
# Install everything the tests need (the project with its test extras, Debian's Chromium for the
# browser test) and run them. Extra arguments go to pytest.
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
.venv/bin/python -m pytest "$@"
