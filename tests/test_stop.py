"""Stop on slow GPUs: a worker in a long VAE decode keeps its place in the warm pool, and no cell hangs.

The pipeline here has real weights (the tiny model) and the timing of a slow GPU: every UNet call sleeps
1.5 s and ``vae.decode`` 3.5 s, and the decode marks a file when it starts, so the test interrupts
right when a worker is inside it. A fixed 2 s grace killed both workers there; worse, the kill went
through SIGINT, which torch's process wrapper turns into a status 0 without a return value, and torch
elastic waited for that value forever: the cell never ended.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kernel import Kernel
from test_faults import stderr_lines, workers_of

STEP, DECODE = 1.5, 3.5

SLOW_PIPE = """
import time
from nbdist.pipelines import load_pipeline
pipe = load_pipeline({model!r}, "float32")
_forward, _decode = pipe.unet.forward, pipe.vae.decode
def slow_forward(*a, **k):
    time.sleep({step}); return _forward(*a, **k)
def slow_decode(*a, **k):
    with open({marks!r}, "a") as f:
        f.write("decode\\n")
    time.sleep({decode}); return _decode(*a, **k)
pipe.unet.forward, pipe.vae.decode = slow_forward, slow_decode
"""


def _decodes(marks: Path) -> int:
    return len(marks.read_text().split()) if marks.exists() else 0


def _interrupt_in_decode(kernel: Kernel, marks: Path, nth: int, into: float) -> dict[str, float]:
    """Interrupt ``into`` s after the ``nth`` decode (counted over all workers) begins; returns when it was sent."""
    sent: dict[str, float] = {}

    def watch() -> None:
        deadline = time.monotonic() + 120
        while _decodes(marks) < nth and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the mark the worker writes: the event itself, not a guess of its time
        time.sleep(into)  # the scenario: "early in the decode"
        sent["at"] = time.monotonic()
        kernel.km.interrupt_kernel()

    threading.Thread(target=watch, daemon=True).start()
    return sent


@pytest.fixture
def slow_kernel(tmp_path: Path, tiny_model: str) -> Kernel:
    marks = tmp_path / "decodes.txt"
    with Kernel(cwd=str(tmp_path)) as k:
        assert k.execute("%load_ext nbdist").error is None
        assert k.execute(SLOW_PIPE.format(model=tiny_model, step=STEP, decode=DECODE, marks=str(marks))).error is None
        yield k


def _pids(kernel: Kernel) -> list[int]:
    return sorted(p.pid for p in workers_of(kernel.pid))


@pytest.mark.timeout(300)
def test_stop_during_a_decode_keeps_the_workers_and_ends_the_cell(slow_kernel: Kernel, tmp_path: Path) -> None:
    marks = tmp_path / "decodes.txt"
    # Two images per worker: the first decode of each worker is measured, the second is interrupted.
    run = "%%distgen --pipe pipe -n 2 --steps 2 -k {k} --seed 0 -o {out}\na red square\na blue circle"
    sent = _interrupt_in_decode(slow_kernel, marks, nth=3, into=0.3)
    ex = slow_kernel.execute(run.format(k=3, out="res"), timeout=120)
    ended = time.monotonic()
    assert ex.error is None, ex.error
    workers = _pids(slow_kernel)
    assert len(workers) == 2
    assert stderr_lines(ex) and stderr_lines(ex)[-1].startswith("interrupted: ")
    print(f"Stop 0.3 s into a {DECODE} s decode: the cell ended {ended - sent['at']:.2f} s later")
    assert ended - sent["at"] <= DECODE + 1.0
    assert slow_kernel.value("len(res.images)") >= 1

    # Again, into the first decode of a run (nothing measured yet in it): the workers stay too.
    before = _decodes(marks)
    sent = _interrupt_in_decode(slow_kernel, marks, nth=before + 1, into=0.3)
    ex = slow_kernel.execute(run.format(k=2, out="res2"), timeout=120)
    ended = time.monotonic()
    assert ex.error is None, ex.error
    assert ended - sent["at"] <= DECODE + 1.0
    assert _pids(slow_kernel) == workers, "a Stop during a decode replaced the warm workers"
    assert "replaced" not in ex.stream() and "new workers" not in ex.stream()


def test_a_worker_stopped_by_sigint_ends_the_run(tiny_model: str) -> None:
    """A worker that gets SIGINT exits non-zero (torch's wrapper would make it 0 and elastic would wait
    forever): the run ends, reporting the stopped worker, and the next run starts a fresh group."""
    import os
    import signal

    import nbdist

    handle = nbdist.generate(
        tiny_model, [f"p{i}" for i in range(40)], num_processes=2, steps=10, seed=0, background=True
    )
    while not handle.records and not handle.done:
        handle.wait_briefly()  # a bounded wait on the run itself
    victim = nbdist.status().pids[0]
    os.kill(victim, signal.SIGINT)
    result = handle.wait(timeout=60)
    assert result.worker_failures and any(str(victim) in f.error for f in result.worker_failures)
    assert nbdist.generate(tiny_model, ["again"], num_processes=2, steps=2, seed=0).complete
    nbdist.shutdown()


def test_pipelines_with_only_the_old_callback_report_steps_and_stop() -> None:
    """PixArt-Σ takes ``callback``/``callback_steps`` and swallows ``callback_on_step_end`` in ``**kwargs``."""
    from nbdist.call_settings import resolve_call
    from nbdist.jobs import make_jobs
    from nbdist.options import GenerateOptions
    from nbdist.tiny_families import build_family
    from nbdist.worker.generation import RunCancelled, run_batch

    pipe = build_family("pixart-sigma")
    pipe.set_progress_bar_config(disable=True)
    call = resolve_call(pipe, "pixart", GenerateOptions(steps=6, height=256, width=256))
    steps: list[int] = []
    asked = iter(range(100))  # the Stop is asked after every step: say yes at the fourth question

    def should_stop() -> bool:
        return next(asked) >= 3

    with pytest.raises(RunCancelled):
        run_batch(pipe, make_jobs(["a cat"], 1, 0), call, lambda step, total: steps.append(step), should_stop)
    assert next(asked) == 4, "the denoising did not stop at the first step that saw the Stop"
    assert steps and steps[0] == 1 and steps[-1] <= 3  # progress reported (throttled to one per 0.1 s)


def test_answer_time_follows_measured_steps_and_decodes() -> None:
    """The kill deadline: a step's worth for a worker in a step, a decode's worth for one in a decode."""
    from nbdist.messages import ImageReady, StepProgress
    from nbdist.parent.pool.answer_time import MARGIN, UNKNOWN_DECODE, AnswerTimes

    times = AnswerTimes(started_at=0.0)
    times.on_message(StepProgress(0, (0,), 1, 2), now=2.0)
    times.on_message(StepProgress(0, (0,), 2, 2), now=3.5)  # 1.5 s a step; the decode begins
    assert times.step_seconds == 1.5
    # Cancelled 0.3 s into a decode never measured: the generous bound, not the 2 s grace.
    assert times.deadline(3.8, 2.0, {0}) == 3.5 + 2 * UNKNOWN_DECODE + MARGIN
    ready = ImageReady(0, 0, "cpu", 7.0, "RGB", (8, 8), b"", b"")
    times.on_message(ready, now=7.0)
    assert times.decode_seconds == 3.5
    times.on_message(StepProgress(0, (1,), 1, 2), now=8.5)
    assert times.deadline(8.6, 2.0, {0}) == 8.5 + 2 * 1.5 + MARGIN  # in a step
    times.on_message(StepProgress(0, (1,), 2, 2), now=10.0)
    assert times.deadline(10.3, 2.0, {0}) == 10.0 + 2 * 3.5 + MARGIN  # in a measured decode
    assert times.deadline(10.3, 2.0, set()) == 12.3  # everyone answered: the plain grace
