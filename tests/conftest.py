"""Shared fixtures: the tiny offline pipeline (saved once per session) and a real Jupyter kernel."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kernel import Kernel


@pytest.fixture(autouse=True, scope="session")
def _runs_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs save their images by default (``nbdist-runs/`` in the working folder): in tests, under a temp folder.

    Kernels inherit it; a test about the default location takes it out of the kernel's environment.
    """
    before = os.environ.get("NBDIST_SAVE_DIR")
    os.environ["NBDIST_SAVE_DIR"] = str(tmp_path_factory.mktemp("nbdist-runs"))
    yield
    if before is None:
        os.environ.pop("NBDIST_SAVE_DIR", None)
    else:
        os.environ["NBDIST_SAVE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Folder of the tiny Stable Diffusion pipeline, written with save_pretrained (built offline)."""
    from nbdist.tiny import ensure_tiny_pipeline

    return str(ensure_tiny_pipeline("tiny"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model: str):
    """The tiny pipeline loaded back with from_pretrained, for reference calls in the test process."""
    from nbdist.pipelines import load_pipeline

    pipe = load_pipeline(tiny_model, "float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    """A fresh ipykernel (the venv's python) with nbdist loaded, working in a temp folder."""
    with Kernel(cwd=str(tmp_path)) as k:
        ex = k.execute("%load_ext nbdist")
        assert ex.error is None, ex.error
        yield k


@pytest.fixture(autouse=True, scope="module")
def _no_warm_workers_between_modules() -> Iterator[None]:
    """Warm workers started by this process (``nbdist.generate``) stop after each test module."""
    yield
    import nbdist

    nbdist.shutdown()


# The fast tier (``pytest -m "not slow"``, for editing): tests that run in the test process within seconds.
# Slow: a whole module of launcher, kernel, browser or cluster tests, or a test that starts a kernel
# (the ``kernel`` fixture, ``Kernel(``), forks a run of workers (``generate(``) or runs a subprocess.
SLOW_MODULES = {
    "test_browser", "test_browser_explore", "test_colab", "test_cuda_build", "test_data_path",
    "test_faults", "test_families", "test_first_run", "test_gpu_fork", "test_install", "test_newcomer",
    "test_pool", "test_pool_faults", "test_ray", "test_stop",
}  # fmt: skip
SLOW_SIGNS = ("Kernel(", "generate(", "subprocess.", "torchrun", "run(cmd", "run([", ".vary(", ".refine(")


def _is_slow(item: pytest.Item) -> bool:
    import inspect

    module = getattr(item, "module", None)
    if module is None or module.__name__ in SLOW_MODULES or "kernel" in getattr(item, "fixturenames", ()):
        return module is not None
    try:
        source = inspect.getsource(item.function)  # type: ignore[attr-defined]
    except (OSError, TypeError, AttributeError):
        return False
    return any(sign in source for sign in SLOW_SIGNS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is None and _is_slow(item):
            item.add_marker(pytest.mark.slow)
