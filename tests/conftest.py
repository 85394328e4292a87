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
