"""The layout's promises, checked: worker code never pulls in the notebook stack, and nothing here
initialises CUDA in the parent."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["nbdist.worker", "nbdist.worker.entry", "nbdist.messages", "nbdist.tiny"])
def test_worker_side_never_imports_ipython_or_widgets(module: str) -> None:
    loaded = modules_after(f"import {module}")
    assert not {m for m in loaded if m.split(".")[0] in {"IPython", "ipywidgets", "ipykernel", "anywidget"}}


def test_messages_are_plain_picklable_dataclasses() -> None:
    import pickle

    from nbdist import messages

    samples = [
        messages.WorkerStarted(0, "cpu", 1, 2, 1),
        messages.StepProgress(0, (1, 2), 3, 4),
        messages.ImageFailed(1, 0, "cpu", "ValueError: x", "tb"),
        messages.WorkerFinished(0),
    ]
    for msg in samples:
        assert pickle.loads(pickle.dumps(msg)) == msg


def test_a_whole_run_leaves_cuda_uninitialised_in_the_parent(tiny_model: str) -> None:
    code = (
        "import nbdist, torch\n"
        f"r = nbdist.generate({tiny_model!r}, ['a dog', 'a cat'], steps=1, seed=0, num_processes=2)\n"
        "assert len(r.images) == 2\n"
        "print(torch.cuda.is_initialized(), torch.cuda._is_in_bad_fork())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
