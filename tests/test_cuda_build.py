"""The kernel side of a GPU machine, on the CUDA build of torch with stand-in GPUs (issue 26).

Every GPU machine has the CUDA build of torch, and there asking CUDA how many devices it has
(``cudaGetDeviceCount``, what ``torch.cuda.is_available()`` does) spoils fork: every child forked later is
in a "bad fork" and cannot use CUDA. ``import diffusers`` asks at import. The CPU build cannot show
any of this, so these tests run only on the CUDA build (``scripts/test_cuda_build.sh`` makes that
environment; the main suite skips them). A stand-in NVML (``fake_nvml``) and ``nvidia-smi``
(``fake_gpus``) make torch and nbdist see two GPUs without a driver; a GPU run's workers then fail at
their first real CUDA call, after the bad-fork check this file is about. Every question about a worker
is asked inside it (``WorkerInfo.bad_fork``, or the worker's own refusal to run on CUDA in a bad fork).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fake_gpus import fake_gpus, fake_nvml, library_path_with, path_with
from kernel import Kernel, assert_usage_error

pytestmark = [
    pytest.mark.cuda_build,
    pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="needs the CUDA build: scripts/test_cuda_build.sh"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="the stand-in NVML is built with gcc"),
]

SPOILED = ("forked after the kernel initialised or probed CUDA", "Cannot re-initialize CUDA")
KERNEL_CUDA = (
    "import torch\nfrom nbdist.parent.machine.devices import _child_in_bad_fork\n"
    "print(torch.cuda.is_initialized(), _child_in_bad_fork())"
)


@pytest.fixture(scope="module")
def gpu_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A kernel environment that sees two 24 GB GPUs through nvidia-smi and NVML, as on a real machine."""
    root = tmp_path_factory.mktemp("stand-in-gpus")
    env = dict(os.environ)
    env.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # nbdist must set it itself
    env["PATH"] = path_with(fake_gpus(root, [{"name": "NVIDIA L4"}, {"name": "NVIDIA L4"}]))
    env["LD_LIBRARY_PATH"] = library_path_with(fake_nvml(root, 2))
    return env


def _kernel_cuda(k: Kernel) -> list[str]:
    """In the kernel: is CUDA initialised, and is a child forked now in a bad fork?"""
    ex = k.execute(KERNEL_CUDA)
    assert ex.error is None, ex.error
    return ex.stream("stdout").split()


def _failures(k: Kernel, name: str) -> list[str]:
    return k.value(f"[f.error for f in {name}.worker_failures]")


def test_the_stand_ins_make_torch_see_gpus_and_diffusers_spoil_fork(gpu_env: dict[str, str]) -> None:
    """The premise, without nbdist: torch counts the stand-in GPUs, and ``import diffusers`` spoils fork."""
    code = (
        "import torch, diffusers\nfrom nbdist.parent.machine.devices import _child_in_bad_fork\n"
        "print(torch.cuda.device_count(), torch.cuda.is_initialized(), _child_in_bad_fork())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=gpu_env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False", "True"]


def test_workers_are_not_in_a_bad_fork_on_any_launch_path(gpu_env: dict[str, str], tmp_path: Path) -> None:
    """``%load_ext nbdist``, then diffusers and a pipeline in the kernel, then every launch path: each worker
    asks torch itself. CPU workers make their images; GPU workers fail at their first CUDA call (no GPU
    here), never at the bad-fork check. The kernel never initialises CUDA through runs, Stop, status and
    clear_cache."""
    demo = "import nbdist; demo = nbdist.demo_model()"
    with Kernel(cwd=str(tmp_path), env=gpu_env) as k:
        assert k.execute("%load_ext nbdist\nimport torch\nfrom diffusers import StableDiffusionPipeline").error is None
        assert k.execute(f"{demo}\np = StableDiffusionPipeline.from_pretrained(demo)").error is None
        assert k.value("torch.cuda.device_count()") == 2  # the kernel sees the GPUs as on a real machine
        for name, flags in [("pool", "-n 2"), ("one", "-n 1")]:
            ex = k.execute(f"%%distgen --pipe p {flags} --device cpu --steps 2 --seed 0 -o {name}\na cat\na dog")
            assert ex.error is None, ex.error
            assert k.value(f"len({name}.images)") == 2
            assert k.value(f"sorted(w.bad_fork for w in {name}.workers.values())") == [False] * int(flags[-1])
        for name, flags in [("gpus", "-n 2"), ("gpu", "-n 1"), ("mapped", "--device-map balanced")]:
            ex = k.execute(f"%%distgen --model demo {flags} --steps 2 --seed 0 -o {name}\na cat")
            assert ex.error is None, ex.error
            failures = _failures(k, name)
            assert failures, f"{flags}: a worker made an image on a stand-in GPU?"
            assert not [f for f in failures if any(s in f for s in SPOILED)], failures
        started = time.monotonic()
        handle = "h = nbdist.generate(p, ['a cat'] * 40, num_processes=2, device='cpu', steps=4, background=True)"
        ends = "h.cancel()\nh.wait(timeout=60)\nnbdist.status()\nnbdist.clear_cache()"
        assert k.execute(f"{handle}\n{ends}").error is None
        assert time.monotonic() - started < 60
        assert _kernel_cuda(k) == ["False", "False"]


def test_a_kernel_that_probed_cuda_first_is_refused_in_one_line(gpu_env: dict[str, str], tmp_path: Path) -> None:
    """diffusers imported before nbdist: the GPU cell is refused before any worker starts, in one line naming the
    fixes; a CPU cell still runs. The fix it names works: the variable set before the kernel starts, diffusers
    imported first all the same, and no refusal."""
    with Kernel(cwd=str(tmp_path), env=gpu_env) as k:
        assert k.execute("import diffusers\n%load_ext nbdist").error is None
        started = time.monotonic()
        ex = k.execute("%%distgen --model demo -n 2 --steps 2\na cat")
        assert time.monotonic() - started < 10
        assert_usage_error(ex, "CUDA was probed in this kernel before the workers started")
        assert_usage_error(ex, "restart the kernel and run %load_ext nbdist (or import nbdist) in its first cell")
        assert_usage_error(ex, "PYTORCH_NVML_BASED_CUDA_CHECK=1")
        assert k.value("__import__('psutil').Process().children()") == []
        ex = k.execute("%%distgen --model demo -n 2 --device cpu --steps 2 -o res\na cat")
        assert ex.error is None and k.value("len(res.images)") == 1
    with Kernel(cwd=str(tmp_path), env={**gpu_env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}) as k:
        assert k.execute("import diffusers\n%load_ext nbdist").error is None
        ex = k.execute("%%distgen --model demo -n 2 --steps 2 -o res\na cat")
        assert "UsageError" not in ex.stream("stderr"), ex.stream("stderr")
        failures = _failures(k, "res")
        assert failures and not [f for f in failures if any(s in f for s in SPOILED)], failures


def test_cli_under_torchrun_on_the_cuda_build(gpu_env: dict[str, str], tmp_path: Path) -> None:
    """``nbdist generate`` under torchrun: its processes are started, not forked from a kernel; on the CUDA build
    with GPUs in sight they make the images (on the CPU here) and write the manifest."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "out"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "nbdist", "generate", "--model", "demo"]
    cmd += ["--prompts", str(prompts), "--out", str(out), "--seed", "0", "--steps", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, env=gpu_env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(line["prompt"] for line in lines) == ["a cat", "a dog"]
