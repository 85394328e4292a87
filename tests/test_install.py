"""The install: a checkout cloned as ./nbdist must not shadow the installed package.

Jupyter and IPython put the current directory first on ``sys.path``. A clone of this repository in a
folder named ``nbdist`` (no ``__init__.py`` at its top) is then a namespace package for Python's path
search; setuptools' default editable install resolves ``nbdist`` with an import hook that runs only
after that search, so ``import nbdist`` gave the empty namespace package and ``%load_ext nbdist`` said
"The nbdist module is not an IPython extension". ``scripts/setup.sh`` installs in ``compat`` mode: a
path entry for the checkout, where the path search finds the real package first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_clone_named_nbdist_in_the_current_folder_does_not_shadow_the_package(tmp_path: Path) -> None:
    (tmp_path / "nbdist").symlink_to(ROOT, target_is_directory=True)  # the checkout, seen as ./nbdist
    code = "import nbdist; print(nbdist.__file__); print(callable(getattr(nbdist, 'load_ipython_extension', None)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    where, is_extension = proc.stdout.split()
    assert where != "None", "imported the checkout folder as a namespace package (rerun scripts/setup.sh)"
    assert Path(where).resolve() == ROOT / "nbdist" / "__init__.py"
    assert is_extension == "True"
