"""The layout's promises, checked: worker code never pulls in the notebook stack, and nothing here
initialises CUDA in the parent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
        messages.StepPreview(1, 0, 4, 15, b"\xff\xd8"),
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


def _imports_of(path: Path, module: str, modules: set[str]) -> set[str]:
    """nbdist modules that ``module`` imports anywhere in its file (function-level imports included)."""
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n != module and not module.startswith(n + ".")}
    return found


def test_no_import_circles() -> None:
    """Modules depend one way: a circle (even through a function-level import) means a misplaced job."""
    root = Path(__file__).resolve().parent.parent / "nbdist"
    files = {
        ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph = {m: _imports_of(p, m, set(files)) for m, p in files.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph[current])
        return False

    circles = sorted({tuple(sorted((m, d))) for m in graph for d in graph[m] if reaches(d, m)})
    assert circles == [], f"import circles: {circles}"
