#!/usr/bin/env bash
# The main job on a fresh CPU-only machine with no model hub: install, then run the quickstart notebook
# (the shipped demo model, two CPU workers) headless, writing notebooks/quickstart.html to look at.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh notebook
.venv/bin/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=600 \
  --output quickstart.html notebooks/quickstart.ipynb
echo "Open notebooks/quickstart.html in a browser, or run: scripts/lab.sh (JupyterLab on a copy of the notebook)"
