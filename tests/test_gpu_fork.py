"""The real-GPU twin of ``test_cuda_build.py``'s bad-fork test: what no stand-in can prove (issue 26).

``scripts/gpu_check.sh`` runs it first on a lent GPU machine: a kernel that loads nbdist, then imports
diffusers in the same cell (which probes CUDA at import), forks workers onto the real GPUs and each of
them makes its images there. Skipped without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kernel import Kernel

from nbdist.parent.machine.devices import visible_gpu_count

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(visible_gpu_count() == 0, reason="needs a CUDA GPU")]


@pytest.mark.parametrize("flags", ["", "-n 1"])
def test_workers_forked_after_diffusers_use_the_gpu(tmp_path: Path, flags: str) -> None:
    with Kernel(cwd=str(tmp_path)) as k:
        ex = k.execute("%load_ext nbdist\nimport torch\nfrom diffusers import StableDiffusionPipeline")
        assert ex.error is None, ex.error
        ex = k.execute(f"%%distgen --model demo {flags} --steps 4 --seed 0 -o res\na red circle\na blue square")
        assert ex.error is None, ex.error
        assert k.value("res.complete"), k.value("[f.error for f in res.worker_failures]")
        workers = k.value("[(w.device, w.bad_fork) for w in res.workers.values()]")
        assert workers and all(device.startswith("cuda") and not bad for device, bad in workers), workers
        assert k.value("torch.cuda.is_initialized()") is False  # the kernel itself never started CUDA
        ex = k.execute("from nbdist.parent.machine.devices import _child_in_bad_fork\nprint(_child_in_bad_fork())")
        assert ex.stream("stdout").strip() == "False"
