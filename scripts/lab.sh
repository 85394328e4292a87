#!/usr/bin/env bash
# JupyterLab on the quickstart, as the README starts it. It opens a copy, my-notebooks/quickstart.ipynb
# (git-ignored; copied from notebooks/quickstart.ipynb the first time, $NBDIST_NOTEBOOKS to put it
# elsewhere), so running the quickstart leaves the tracked notebook as it is. As root (Docker, cloud
# images) it adds --allow-root, without which jupyter stops with "Running as root is not recommended".
# Arguments go to `jupyter lab` (options as --name=value); a notebook path among them is opened instead
# of the copy. $NBDIST_JUPYTER: the jupyter to run (default: .venv/bin/jupyter of this clone).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
jupyter="${NBDIST_JUPYTER:-$root/.venv/bin/jupyter}"
args=("$@")
path_given=0
for arg in "$@"; do
  case "$arg" in -*) ;; *) path_given=1 ;; esac
done
if [ "$path_given" = 0 ]; then
  notebooks="${NBDIST_NOTEBOOKS:-$root/my-notebooks}"
  mkdir -p "$notebooks"
  [ -e "$notebooks/quickstart.ipynb" ] || cp "$root/notebooks/quickstart.ipynb" "$notebooks/quickstart.ipynb"
  cd "$notebooks"  # the server's root: the runs folder (nbdist-runs/) goes next to the copy
  args+=(quickstart.ipynb)
fi
if [ "$(id -u)" = 0 ]; then
  args+=(--allow-root)
fi
exec "$jupyter" lab "${args[@]}"
