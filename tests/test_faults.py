"""Faults over a real kernel: interrupt, a prompt that raises, a worker that dies, a kernel that dies,
CUDA initialised before the fork, two kernels at once, 30 runs in a row, and where the rendezvous listens.

Every test looks at what a notebook would see (iopub messages and their times), at the kernel's process
tree (psutil) and at the results and files kept. Interrupts and kills are sent when the first image
update arrives (``on_message``), never after a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from kernel import Execution, Kernel, Received
from PIL import Image

from nbdist.parent.machine.devices import visible_gpu_count

FLAKY_PIPELINE = """
import os
from diffusers import StableDiffusionPipeline

class Flaky(StableDiffusionPipeline):
    '''The tiny pipeline, except that a prompt containing "boom" raises and one containing "die" exits.'''

    def __call__(self, prompt=None, **kwargs):
        if any("boom" in p for p in prompt):
            raise ValueError("boom: this prompt always fails")
        if any("die" in p for p in prompt):
            os._exit(3)
        return super().__call__(prompt=prompt, **kwargs)

flaky = Flaky.from_pretrained({path!r})
"""


def workers_of(pid: int) -> list[psutil.Process]:
    """Live (non-zombie) descendants of the kernel: its workers, and anything they started."""
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until none of ``pids`` is alive (zombies count as gone); fails after ``timeout``."""
    start = time.monotonic()
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"still alive after {timeout} s: {alive}"
        time.sleep(0.02)


def is_image_update(rec: Received) -> bool:
    """A widget update that carries a finished image's thumbnail (not a live preview) to the gallery."""
    data = rec.content.get("data", {})
    finished = ["thumbnail"] in data.get("buffer_paths", [])
    return rec.msg_type == "comm_msg" and bool(rec.buffers) and data.get("method") == "update" and finished


class OnFirstImage:
    """An ``on_message`` callback that runs ``action`` once, when the first image reaches the gallery."""

    def __init__(self, kernel: Kernel, action: Callable[[OnFirstImage], None]) -> None:
        self.kernel = kernel
        self.action = action
        self.at: float | None = None
        self.worker_pids: list[int] = []

    def __call__(self, rec: Received) -> None:
        if self.at is not None or not is_image_update(rec):
            return
        self.worker_pids = [p.pid for p in workers_of(self.kernel.pid)]
        self.at = time.monotonic()
        self.action(self)


def stderr_lines(ex: Execution) -> list[str]:
    return [line for line in ex.stream("stderr").splitlines() if line.strip()]


def test_interrupt_keeps_complete_files(kernel: Kernel, tiny_model: str, tmp_path: Path) -> None:
    """Interrupted: the PNGs and manifest on disk are exactly the finished images, each complete."""
    prompts = "\n".join(f"prompt number {i}" for i in range(16))
    hook = OnFirstImage(kernel, lambda h: h.kernel.km.interrupt_kernel())
    ex = kernel.execute(
        f"%%distgen --model {tiny_model} -n 2 --steps 10 --seed 0 -o res --save-dir out\n{prompts}",
        on_message=hook,
    )
    replied = time.monotonic()
    assert hook.at is not None, "no image arrived before the run ended"
    assert len(hook.worker_pids) >= 2
    assert replied - hook.at < 2.0, f"cell ended {replied - hook.at:.2f} s after the interrupt"
    assert sorted(p.pid for p in workers_of(kernel.pid)) == sorted(hook.worker_pids)  # kept warm
    assert ex.error is None, ex.error  # no KeyboardInterrupt traceback: the cell ends normally
    lines = stderr_lines(ex)
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and lines[0].endswith(" of 16 images, kept in res")
    kept = int(lines[0].split()[1])
    assert 1 <= kept < 16

    state = kernel.value("(res.interrupted, len(res.images), len(res.missing), sorted(r.index for r in res if r.ok))")
    assert state[0] is True and state[1] == kept and state[1] + state[2] == 16
    saved = sorted((tmp_path / "out").glob("*.png"))
    assert [int(p.name[:5]) for p in saved] == state[3]
    assert not list((tmp_path / "out").glob("*.part"))
    for path in saved:
        with Image.open(path) as img:
            img.load()  # raises on a truncated file
            assert img.text["prompt"].startswith("prompt number")
    manifest = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in manifest) == state[3]
    print(f"interrupt: cell ended {replied - hook.at:.2f} s after it")

    # The next run starts at once and is complete.
    again = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 -o res2\none\ntwo")
    assert again.error is None and stderr_lines(again) == []
    assert kernel.value("(res2.complete, len(res2.images))") == (True, 2)


def test_stuck_worker_is_killed_and_replaced(kernel: Kernel, tiny_model: str) -> None:
    """A worker that does not stop within 2 s of a cancel (stuck in a library, ignoring signals) is killed.

    The cell does not wait for that: an interrupt ends the wait within a second, with the images so far.
    """
    ex = kernel.execute(
        FLAKY_PIPELINE.format(path=tiny_model)
        + """
import signal, time
class Stubborn(Flaky):
    def __call__(self, prompt=None, **kwargs):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if any("stuck" in p for p in prompt):
            time.sleep(60)  # never reaches a step callback
        return super().__call__(prompt=prompt, **kwargs)
stubborn = Stubborn(**flaky.components)
"""
    )
    assert ex.error is None, ex.error
    hook = OnFirstImage(kernel, lambda h: h.kernel.km.interrupt_kernel())
    prompts = "\n".join(["p0", "p1", "p2", "stuck", "p4", "p5"])  # worker 1 gets stuck, p4, p5
    ex = kernel.execute(f"%%distgen --pipe stubborn -n 2 --steps 4 --seed 0 -o res\n{prompts}", on_message=hook)
    replied = time.monotonic()
    assert hook.at is not None
    assert replied - hook.at < 1.5, f"cell ended {replied - hook.at:.2f} s after the interrupt"  # not the 2 s grace
    gone = wait_gone(hook.worker_pids, timeout=4.0)  # the pool kills them in the background
    print(f"stuck worker: cell ended {replied - hook.at:.2f} s after the interrupt, workers gone {gone:.2f} s later")
    assert ex.error is None, ex.error
    assert stderr_lines(ex)[0].startswith("nbdist: stopped waiting for the workers; ")
    assert stderr_lines(ex)[1].startswith("interrupted: ")
    assert "Traceback" not in ex.stream() and "E1" not in ex.stream()
    assert kernel.value("res.interrupted") is True
    again = kernel.execute("%%distgen --pipe stubborn -n 2 --steps 1 --seed 0 -o res2\na\nb")
    assert again.error is None and kernel.value("res2.complete")
    assert not {p.pid for p in workers_of(kernel.pid)} & set(hook.worker_pids)


def test_prompt_that_raises(kernel: Kernel, tiny_model: str) -> None:
    assert kernel.execute(FLAKY_PIPELINE.format(path=tiny_model)).error is None
    ex = kernel.execute("%%distgen --pipe flaky -n 2 --steps 2 --seed 0 -o res\na red fox\nboom goes the prompt\nc\nd")
    assert ex.error is None, ex.error
    assert sum(map(is_image_update, ex.messages)) == 3  # the other images still arrive
    assert "Traceback" not in ex.stream()
    lines = stderr_lines(ex)
    assert len(lines) == 2, lines
    assert lines[0] == "nbdist: 1 image(s) failed; full traceback: res[1].traceback"
    assert "[worker " in lines[1] and "ValueError: boom: this prompt always fails" in lines[1]
    assert "#1 'boom goes the prompt'" in lines[1]
    # The failed tile says so.
    states = [json.dumps(m.content.get("data", {})) for m in ex.of_type("comm_msg")]
    assert any("failed" in s and "ValueError" in s for s in states)
    rec = kernel.value("(res[1].image is None, res[1].error, 'ValueError' in res[1].traceback, len(res.images))")
    assert rec == (True, "ValueError: boom: this prompt always fails", True, 3)


def test_worker_killed_is_reported(kernel: Kernel, tiny_model: str) -> None:
    """SIGKILL of one worker (what the OOM killer does): noticed at once, the others' images kept."""
    killed: list[int] = []

    def kill_one(h: OnFirstImage) -> None:
        target = h.worker_pids[-1]
        killed.append(target)
        os.kill(target, signal.SIGKILL)

    hook = OnFirstImage(kernel, kill_one)
    prompts = "\n".join(f"p{i}" for i in range(16))
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 10 --seed 0 -o res\n{prompts}", on_message=hook)
    replied = time.monotonic()
    assert hook.at is not None and killed
    assert replied - hook.at < 2.0, f"cell ended {replied - hook.at:.2f} s after the kill"
    print(f"worker SIGKILL: cell ended {replied - hook.at:.2f} s after the kill; {stderr_lines(ex)}")
    assert workers_of(kernel.pid) == []
    assert ex.error is None, ex.error
    text = ex.stream()
    assert "ChildFailedError" not in text and "Traceback" not in text
    lines = stderr_lines(ex)
    assert any(f"worker process {killed[0]} killed by SIGKILL" in line for line in lines), lines
    assert any("not generated, listed in res.missing" in line for line in lines), lines
    assert len(lines) <= 4
    done, missing, failures = kernel.value("(len(res.images), len(res.missing), len(res.worker_failures))")
    assert done >= 1 and missing >= 1 and done + missing == 16 and failures == 1


def test_worker_exit_is_reported(kernel: Kernel, tiny_model: str) -> None:
    """A worker that calls os._exit in the middle of its share: the images made before are kept."""
    assert kernel.execute(FLAKY_PIPELINE.format(path=tiny_model)).error is None
    prompts = "\n".join([*(f"p{i}" for i in range(7)), "die here"])  # rank 1 gets p4..p6, then dies
    start = time.monotonic()
    ex = kernel.execute(f"%%distgen --pipe flaky -n 2 --steps 2 --seed 0 -o res\n{prompts}")
    assert ex.error is None, ex.error
    assert time.monotonic() - start < 30
    lines = stderr_lines(ex)
    assert any("exited with status 3" in line for line in lines), lines
    print(f"os._exit: {lines}")
    made = kernel.value("sorted(r.index for r in res if r.ok)")
    # The dying worker's first images and the other worker's are kept. (os._exit drops what the worker had
    # not yet handed to the queue: at most the image just finished, whose encoding overlaps the next one.)
    assert {0, 4} <= set(made)
    assert 7 not in made and workers_of(kernel.pid) == []


def test_kernel_death_leaves_no_orphans(tiny_model: str, tmp_path: Path) -> None:
    k = Kernel(cwd=str(tmp_path))
    try:
        assert k.execute("%load_ext nbdist").error is None
        kernel_pid = k.pid

        class KernelKilled(Exception):
            pass

        def kill_kernel(h: OnFirstImage) -> None:
            os.kill(kernel_pid, signal.SIGKILL)
            raise KernelKilled  # stop listening: the kernel will never reply

        hook = OnFirstImage(k, kill_kernel)
        prompts = "\n".join(f"p{i}" for i in range(16))
        with pytest.raises(KernelKilled):
            k.execute(f"%%distgen --model {tiny_model} -n 2 --steps 10\n{prompts}", on_message=hook, timeout=60)
        assert hook.at is not None and len(hook.worker_pids) >= 2
        gone = wait_gone(hook.worker_pids, timeout=2.0)
        print(f"workers gone {gone:.2f} s after the kernel was killed")
    finally:
        k.close()


def test_two_kernels_at_once(tiny_model: str, tmp_path: Path) -> None:
    """Each run takes its own free port; both finish complete."""
    results: dict[int, Execution] = {}
    kernels = [Kernel(cwd=str(tmp_path)) for _ in range(2)]
    try:
        for k in kernels:
            assert k.execute("%load_ext nbdist").error is None

        def run(i: int) -> None:
            code = f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed {i} -o res\n" + "\n".join("abcd")
            results[i] = kernels[i].execute(code, timeout=120)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, k in enumerate(kernels):
            assert results[i].error is None, results[i].error
            assert k.value("(res.complete, len(res.images))") == (True, 4)
    finally:
        for k in kernels:
            k.close()


def test_rendezvous_listens_on_loopback_only(kernel: Kernel, tiny_model: str) -> None:
    found: list[tuple[int, str]] = []

    def listening(h: OnFirstImage) -> None:
        for proc in [psutil.Process(h.kernel.pid), *workers_of(h.kernel.pid)]:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, conn.laddr.ip))
        h.kernel.km.interrupt_kernel()  # seen enough

    hook = OnFirstImage(kernel, listening)
    prompts = "\n".join(f"p{i}" for i in range(6))
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 10 --seed 0 -o res\n{prompts}", on_message=hook)
    assert ex.error is None and hook.at is not None
    workers = set(hook.worker_pids)
    assert any(pid in workers for pid, _ in found), "the workers' gloo sockets were not seen"
    assert found and all(ip in ("127.0.0.1", "::1") for _, ip in found), found


def test_cuda_probe_leaves_no_child() -> None:
    """The bad-fork probe forks and reaps one child; on a machine without CUDA use it reports False."""
    import torch  # noqa: F401 - the probe only runs with torch imported

    from nbdist.parent.machine.devices import _child_in_bad_fork, cuda_initialized

    before = psutil.Process().children()
    assert _child_in_bad_fork() is False
    assert cuda_initialized() is False
    assert psutil.Process().children() == before


@pytest.mark.gpu
@pytest.mark.skipif(visible_gpu_count() == 0, reason="needs a CUDA GPU")
def test_cuda_initialised_in_kernel(kernel: Kernel, tiny_model: str) -> None:
    assert kernel.execute("import torch; torch.zeros(1, device='cuda'); print('ok')").error is None
    ex = kernel.execute(f"%%distgen --model {tiny_model} --steps 2\na")
    assert ex.error is not None and ex.error["ename"] == "UsageError"
    assert "CUDA is already initialised" in ex.error["evalue"] and "Restart the kernel" in ex.error["evalue"]
    assert not ex.of_type("comm_open") and workers_of(kernel.pid) == []
