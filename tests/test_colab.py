"""A kernel that looks like Colab the way accelerate detects it (issue 26, item 3).

accelerate's ``notebook_launcher`` calls the function inside the kernel on Colab when it sees fewer than
two GPUs (``"google.colab" in str(get_ipython())``), and nbdist's worker entry then ends that process:
the kernel died. Here the kernel's shell is given Colab's module name, and a stand-in ``google.colab``
package records what nbdist asks of Colab's front end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kernel import Kernel

COLAB_SHELL = (
    "_ip = get_ipython()\n"
    "_ip.__class__ = type('Shell', (type(_ip),), {'__module__': 'google.colab._shell'})\n"
    "assert 'google.colab' in str(get_ipython())"
)


@pytest.fixture
def colab_env(tmp_path: Path) -> dict[str, str]:
    """``google.colab.output`` on the path: ``enable_custom_widget_manager`` writes a marker file."""
    package = tmp_path / "standin" / "google" / "colab"
    package.mkdir(parents=True)
    # google/ stays a namespace package: protobuf's google.protobuf must still import
    (package / "__init__.py").write_text("")
    marker = tmp_path / "custom-widget-manager"
    (package / "output.py").write_text(
        f"def enable_custom_widget_manager():\n    open({str(marker)!r}, 'a').write('on\\n')\n"
    )
    paths = [str(tmp_path / "standin"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


@pytest.mark.parametrize("workers", [2, 1])
def test_colab_kernel_forks_its_workers_and_shows_the_gallery(tmp_path: Path, colab_env, workers: int) -> None:
    with Kernel(cwd=str(tmp_path), env=colab_env) as k:
        assert k.execute(COLAB_SHELL).error is None
        assert k.execute("%load_ext nbdist").error is None
        assert (tmp_path / "custom-widget-manager").read_text() == "on\n"
        ex = k.execute(f"%%distgen --model demo -n {workers} --steps 2 --seed 0 -o res\na red circle\na blue square")
        assert ex.error is None, ex.error
        assert k.value("len(res.images)") == 2
        pids = k.value("sorted(w.pid for w in res.workers.values())")
        assert len(pids) == workers and k.pid not in pids  # made in forked workers, never in the kernel
        assert k.value("1 + 1") == 2  # the kernel lives on
