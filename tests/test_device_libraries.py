"""A kernel with bitsandbytes installed: no CUDA start behind the user's back, and %%distgen still runs.

A stand-in ``bitsandbytes`` distribution (a package plus a ``.dist-info``, so diffusers, transformers
and peft believe it is installed) records the pid of every process that imports it. The real one
initialises CUDA on import; the kernel must never import it before its workers fork, and
``notebook_launcher`` must not refuse to start because of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_gpus import fake_gpus, path_with
from kernel import Kernel, assert_usage_error


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for ``PYTHONPATH`` holding the stand-in bitsandbytes distribution."""
    root = tmp_path_factory.mktemp("standin")
    package = root / "bitsandbytes"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """\
            import os
            with open(os.environ["STANDIN_BNB_LOG"], "a") as log:
                log.write(f"{os.getpid()}\\n")
            __version__ = "0.45.5"
            """
        )
    )
    info = root / "bitsandbytes-0.45.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.45.5\n")
    (info / "top_level.txt").write_text("bitsandbytes\n")
    return root


def _env(standin: Path, log: Path, **more: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(standin), env.get("PYTHONPATH", "")) if p)
    env["STANDIN_BNB_LOG"] = str(log)
    env.update(more)
    return env


def _importers(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_kernel_never_imports_bitsandbytes_and_distgen_runs(standin: Path, tmp_path: Path, tiny_model: str) -> None:
    log = tmp_path / "imports.log"
    with Kernel(cwd=str(tmp_path), env=_env(standin, log)) as k:
        assert k.execute("%load_ext nbdist").error is None
        ex = k.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 -o res\na red square\na blue circle")
        assert ex.error is None, ex.error
        assert k.value("(len(res.images), len(res.errors))") == (2, 0)
        # diffusers' pipeline machinery is loaded in the kernel: without nbdist it would have imported it
        assert k.value("'diffusers.pipelines.pipeline_utils' in __import__('sys').modules") is True
        assert k.value("__import__('sys').modules['bitsandbytes'] is None")
        assert k.value("__import__('diffusers').utils.is_bitsandbytes_available()") is False
        # the workers may use it: it is theirs again after the fork
        workers = k.value("__import__('nbdist').status().pids")
        assert len(workers) == 2
        assert k.pid not in _importers(log)


def test_imported_before_nbdist_still_runs_on_a_cpu(standin: Path, tmp_path: Path, tiny_model: str) -> None:
    """The user imported diffusers first, so bitsandbytes is in the kernel: accelerate's blanket refusal
    is replaced by the direct check (no CUDA context here), and the run goes ahead."""
    log = tmp_path / "imports.log"
    with Kernel(cwd=str(tmp_path), env=_env(standin, log)) as k:
        assert k.execute("from diffusers import DiffusionPipeline").error is None
        assert _importers(log) == [k.pid]  # the stand-in works: diffusers imports it when installed
        assert k.execute("%load_ext nbdist").error is None
        ex = k.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 -o res\na red square\na blue circle")
        assert ex.error is None, ex.error
        assert "Could not start distributed process" not in ex.stream()
        assert k.value("len(res.images)") == 2


def test_workers_get_bitsandbytes_back(standin: Path, tmp_path: Path) -> None:
    """In a forked worker the marker goes, the libraries' cached "installed?" answers are recomputed, and
    diffusers' quantizer module gets the ``bnb`` it skipped: what 4/8-bit loading needs."""
    log = tmp_path / "imports.log"
    script = textwrap.dedent(
        """\
        import os, sys
        import nbdist
        import diffusers
        from diffusers import DiffusionPipeline
        assert sys.modules["bitsandbytes"] is None and not diffusers.utils.is_bitsandbytes_available()
        pid = os.fork()
        if pid == 0:
            from nbdist.device_libraries import import_in_worker, restore_in_worker
            assert restore_in_worker() == ["bitsandbytes"]
            ok = diffusers.utils.is_bitsandbytes_available()
            module = import_in_worker("bitsandbytes")
            import diffusers.quantizers.bitsandbytes.utils as utils
            os._exit(0 if ok and utils.bnb is module else 3)
        _, status = os.waitpid(pid, 0)
        print(pid, os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=_env(standin, log), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    child, status = map(int, done.stdout.split())
    assert status == 0
    assert _importers(log) == [child]  # imported once, in the worker, never in the parent


def test_launched_processes_keep_bitsandbytes(standin: Path, tmp_path: Path) -> None:
    """Under torchrun each process is a GPU worker loading its own model: nothing is hidden there."""
    log = tmp_path / "imports.log"
    script = "import nbdist, diffusers; print(diffusers.utils.is_bitsandbytes_available())"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(standin, log, LOCAL_RANK="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "True", done.stderr


def test_a_cuda_context_made_by_another_library_is_refused(tmp_path: Path, tiny_model: str) -> None:
    """The driver lists the kernel's pid among its CUDA contexts (here: a stand-in nvidia-smi): refused
    before anything starts, naming the likely library and the fix."""
    with Kernel(cwd=str(tmp_path), env={**os.environ, "PATH": path_with(tmp_path / "bin")}) as k:
        fake_gpus(tmp_path, [{"memory_gb": 24}, {"memory_gb": 24}], compute_apps=[k.pid])
        assert k.execute("%load_ext nbdist").error is None
        assert k.execute("import sys, types; sys.modules['jax'] = types.ModuleType('jax')").error is None
        ex = k.execute(f"%%distgen --model {tiny_model} --steps 2\na")
        assert_usage_error(ex, "CUDA is already initialised in this kernel (by JAX)")
        assert "Restart the kernel" in ex.stream("stderr")
        assert k.value("__import__('nbdist').status().pids") == []
