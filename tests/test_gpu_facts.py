"""GPU facts for the plan: which GPUs count, which become workers, and what the workers are told.

Why: the capability and the count must follow ``CUDA_VISIBLE_DEVICES`` (by index or UUID), a GPU that
drives a screen must not become a worker unless asked (``-n`` larger than the headless ones), and the
workers must then really run on the chosen GPUs: their ``CUDA_VISIBLE_DEVICES`` is narrowed right
after the fork, never widened beyond the kernel's own. A stand-in ``nvidia-smi`` (``tests/fake_gpus.py``)
makes the real code see the GPUs each case needs; the last test follows the choice into real workers
forked from a real kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_gpus import fake_gpus, path_with
from kernel import Kernel

from nbdist.options import GenerateOptions, NbdistUsageError
from nbdist.parent.machine.devices import choose_gpus, visible_gpu_count
from nbdist.parent.machine.gpus import query_gpus
from nbdist.parent.planning.plan import plan_run

SCREEN = {"memory_gb": 24, "display": True, "name": "RTX 4090"}
HEADLESS = {"memory_gb": 24, "name": "RTX 4090"}


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``gpus([...], **extra)``: put a stand-in nvidia-smi answering for these GPUs first on PATH."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def put(specs: list[dict], **extra: object) -> Path:
        bin_dir = fake_gpus(tmp_path / "smi", specs, **extra)
        monkeypatch.setenv("PATH", path_with(bin_dir))
        return bin_dir

    return put


def test_display_gpu_left_out_by_default_and_used_when_asked(gpus) -> None:
    gpus([SCREEN, HEADLESS, HEADLESS])
    choice = choose_gpus(None)
    assert (choice.count, choice.cuda_visible) == (2, "GPU-fake-1,GPU-fake-2")
    assert choice.note == "nbdist: GPU 0 (RTX 4090) drives a display, left out; -n 3 to use it too"
    everything = choose_gpus(3)  # the user asked for all three: the display GPU too, in CUDA's order
    assert (everything.count, everything.cuda_visible, everything.note) == (3, None, None)
    one = choose_gpus(1)
    assert (one.count, one.cuda_visible, one.note) == (1, "GPU-fake-1", None)
    with pytest.raises(NbdistUsageError, match="-n 4: only 3 GPU"):
        choose_gpus(4)


def test_a_lone_display_gpu_is_used(gpus) -> None:
    """A laptop or workstation with one GPU: it drives the screen and it is the only one there is."""
    gpus([SCREEN])
    choice = choose_gpus(None)
    assert (choice.count, choice.cuda_visible, choice.note) == (1, None, None)


def test_the_users_cuda_visible_devices_is_narrowed_never_widened(gpus, monkeypatch) -> None:
    gpus([SCREEN, HEADLESS, HEADLESS])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert visible_gpu_count() == 2
    choice = choose_gpus(None)
    assert (choice.count, choice.cuda_visible) == (1, "GPU-fake-2")  # GPU 1 was not the user's to give
    assert "-n 2 to use it too" in (choice.note or "")
    assert choose_gpus(2).cuda_visible is None  # both of the user's GPUs: their own setting stands
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fake-2,GPU-fake-1")  # by UUID, in the user's order
    assert [g.physical for g in query_gpus().gpus] == [2, 1]
    assert (choose_gpus(None).count, choose_gpus(None).cuda_visible) == (2, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_count() == 0


def test_facts_missing_are_said_and_counted_safely(gpus, monkeypatch, tmp_path) -> None:
    gpus([HEADLESS, HEADLESS], old_driver=True)
    query = query_gpus()
    assert len(query.gpus) == 2 and all(g.compute_cap is None for g in query.gpus)
    assert query.problem is not None and "too old to report compute capability" in query.problem
    assert choose_gpus(None).count == 2
    gpus([HEADLESS], fail="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")
    assert visible_gpu_count() == 0 and "couldn't communicate" in (query_gpus().problem or "")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert visible_gpu_count() == 0 and "nvidia-smi not found" in (query_gpus().problem or "")


def test_plan_counts_compute_gpus_and_keys_the_pool_on_them(gpus, tiny_model) -> None:
    gpus([SCREEN, HEADLESS, HEADLESS])
    plan = plan_run(tiny_model, ["a cat"], GenerateOptions(seed=0, steps=1))
    assert (plan.device_type, plan.num_processes, plan.cuda_visible) == ("cuda", 2, "GPU-fake-1,GPU-fake-2")
    assert any("drives a display" in note for note in plan.notes)
    wide = plan_run(tiny_model, ["a cat"], GenerateOptions(seed=0, steps=1, num_processes=3))
    assert wide.cuda_visible is None and wide.key != plan.key and "-n" in plan.key.difference(wide.key)


def test_workers_run_on_the_chosen_gpu(tmp_path: Path, tiny_model: str) -> None:
    """Real kernel, real fork: GPU 0 drives a display, so the one worker gets ``CUDA_VISIBLE_DEVICES`` =
    GPU 1's UUID before its pipeline is placed; the kernel's own environment is left as it was.

    The stand-in nvidia-smi makes the plan choose ``cuda``; this machine's torch has no CUDA, so the
    worker still computes on the CPU, which is all this test needs: it records what the worker saw
    when ``pipe.to`` was called.
    """
    bin_dir = fake_gpus(tmp_path / "smi", [SCREEN, HEADLESS])
    record = tmp_path / "placed.txt"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    with Kernel(cwd=str(tmp_path), env={**env, "PATH": path_with(bin_dir)}) as k:
        assert k.execute("%load_ext nbdist").error is None
        setup = (
            "import os\nfrom diffusers import DiffusionPipeline\n"
            f"pipe = DiffusionPipeline.from_pretrained({tiny_model!r})\n"
            "def to(*args, _to=pipe.to, **kwargs):\n"
            f"    with open({str(record)!r}, 'a') as f:\n"
            "        f.write(f\"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\\n\")\n"
            "    return _to('cpu')\n"
            "pipe.to = to\n"
        )
        assert k.execute(setup).error is None
        ex = k.execute("%%distgen --pipe pipe --steps 1 --seed 0 -o res\na cat", timeout=120)
        assert ex.error is None, ex.error
        assert "GPU 0 (RTX 4090) drives a display, left out; -n 2 to use it too" in ex.stream("stderr")
        assert k.value("(len(res.images), os.environ.get('CUDA_VISIBLE_DEVICES'))") == (1, None)
        pid, seen = record.read_text().split()
        assert int(pid) != k.pid and seen == "GPU-fake-1"


A100_MIG = {"memory_gb": 80, "name": "NVIDIA A100-SXM4-80GB", "compute_cap": 8.0, "mig": ["3g.40gb", "3g.40gb"]}


def test_mig_instances_are_gpus_each_worker_given_its_own(gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """``CUDA_VISIBLE_DEVICES=MIG-...`` (as a scheduler hands out MIG slices): two GPUs of 40 GB with the
    A100's capability, not zero GPUs and a silent fp32 run on the CPU (issue 26). CUDA shows a process one
    instance only, so each worker gets its own as its device 0."""
    from nbdist.worker.setup import visible_devices

    gpus([A100_MIG])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-fake-0-0,MIG-fake-0-1")
    found = query_gpus().gpus
    assert [(g.index, g.uuid, g.name, g.memory_total, g.compute_cap) for g in found] == [
        (0, "MIG-fake-0-0", "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40 * 10**9, 8.0),
        (1, "MIG-fake-0-1", "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40 * 10**9, 8.0),
    ]
    choice = choose_gpus(None)
    assert (choice.count, choice.cuda_visible) == (2, "MIG-fake-0-0,MIG-fake-0-1")
    assert visible_devices(choice.cuda_visible, 1) == {"CUDA_VISIBLE_DEVICES": "MIG-fake-0-1", "LOCAL_RANK": "0"}
    assert visible_devices("GPU-fake-1,GPU-fake-2", 1) == {"CUDA_VISIBLE_DEVICES": "GPU-fake-1,GPU-fake-2"}
    plan = plan_run(nbdist_demo(), ["a cat"], GenerateOptions())
    assert (plan.device_type, plan.dtype, plan.num_processes) == ("cuda", "float16", 2)  # the SD1.x rule on GPUs


def nbdist_demo() -> str:
    import nbdist

    return nbdist.demo_model()


@pytest.mark.parametrize(("driver", "expected"), [("535.104.05", {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}),
                                                  ("550.54.14", {})])  # fmt: skip
def test_rtx_40_peer_to_peer_rules_on_every_worker(gpus, monkeypatch: pytest.MonkeyPatch, driver, expected) -> None:
    """accelerate turns NCCL's P2P and InfiniBand off for RTX 40-series GPUs under drivers before 550.40.07, but
    only in notebook_launcher; every nbdist worker applies the same rule when it gets ready (``get_ready``:
    forked pool, ``-n 1``, ``--device-map``, Ray actors, torchrun), from nvidia-smi, never CUDA."""
    from nbdist.worker.setup import nccl_environment

    gpus([HEADLESS, HEADLESS], driver_version=driver)
    for name in ("NCCL_P2P_DISABLE", "NCCL_IB_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    assert nccl_environment("cuda") == expected
    assert {k: os.environ[k] for k in expected} == expected
    assert nccl_environment("cpu") == {}
