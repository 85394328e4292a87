"""VS Code shows one gallery: its renderer ignores the CSS that hides the static copy next to the live one.

VS Code's kernels are faked with the two signals nbdist reads: ``VSCODE_PID`` in the kernel's
environment, ``__vsc_ipynb_file__`` in its namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from kernel import Execution, Kernel

from nbdist.notebook.gallery import WIDGET_VIEW_MIMETYPE

CELL = "%%distgen --model demo -n 2 --seed 0 -o res\na red circle on a blue background\n"


def _galleries(ex: Execution) -> tuple[int, int]:
    """(live widget displays, static copies) among the cell's outputs."""
    outputs = [m.content.get("data", {}) for m in ex.of_type("display_data", "execute_result", "update_display_data")]
    live = sum(1 for data in outputs if WIDGET_VIEW_MIMETYPE in data)
    static = sum(1 for data in outputs if 'class="nbdist-static ' in data.get("text/html", ""))
    return live, static


def test_vscode_kernels_show_the_live_gallery_alone(tmp_path: Path) -> None:
    with Kernel(cwd=str(tmp_path), env={**os.environ, "VSCODE_PID": "4242"}) as kernel:
        assert kernel.execute("%load_ext nbdist").error is None
        ex = kernel.execute(CELL)
        assert ex.error is None, ex.error
        assert _galleries(ex) == (1, 0)
        assert kernel.value("len(res.images)") == 1  # the result itself is all there
        ex = kernel.execute(CELL.replace("-o res", "--background -o handle"))
        assert ex.error is None, ex.error
        assert _galleries(ex) == (1, 0)  # no static copy kept beside it either (shown at once elsewhere)
        assert kernel.value("handle.wait(60).complete") is True


def test_the_notebook_file_in_the_namespace_is_enough_and_other_front_ends_keep_both(kernel) -> None:
    ex = kernel.execute(CELL)
    assert ex.error is None, ex.error
    assert _galleries(ex) == (1, 1)  # JupyterLab: the CSS hides the static copy next to the live one
    kernel.execute("__vsc_ipynb_file__ = '/tmp/x.ipynb'")
    ex = kernel.execute(CELL)
    assert _galleries(ex) == (1, 0)
