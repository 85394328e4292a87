"""A failure at each step of driving the forked workers ends the cell in one line; the next cell works.

The pool drives its workers only through ``WorkerBackend`` (start, run, receive, cancel, stop). Each
step is made to raise once inside a real kernel (the method of ``WorkerGroup`` replaced there, restoring
itself as it raises, as a bug or a refused call would), and the test looks at what the notebook gets:
the cell ends within 5 s of the failure with the error in one line and no traceback, and the next cell
gives every image. The same for the Ray actors is in test_ray.py.
"""

from __future__ import annotations

import time

from kernel import Execution, Kernel
from test_faults import OnFirstImage, stderr_lines

INJECT = """
import time as _time
import nbdist.parent.fork.workers as _workers
_real = _workers.WorkerGroup.{method}
_failed_at = None
def _broken(self, *args, **kwargs):
    global _failed_at
    _workers.WorkerGroup.{method} = _real  # once: the next cell's workers are whole again
    _failed_at = _time.time()
    raise RuntimeError("injected failure in {method}")
_workers.WorkerGroup.{method} = _broken
"""
PROMPTS = ["a dog", "a cat", "a lighthouse", "a bowl of ramen"]


def _cell(model: str, n: int = 2, steps: int = 2, prompts: list[str] = PROMPTS) -> str:
    return f"%%distgen --model {model} -n {n} --steps {steps} --seed 0 -o res\n" + "\n".join(prompts)


def _failed_in_one_line(kernel: Kernel, ex: Execution, method: str, ended: float, bound: float = 5.0) -> float:
    """The cell ended normally, soon after the failure, saying it once; seconds from failure to the end."""
    assert ex.error is None, (method, ex.error)
    said = [line for line in stderr_lines(ex) if f"RuntimeError: injected failure in {method}" in line]
    assert len(said) == 1 and "Traceback" not in ex.stream(), (method, stderr_lines(ex))
    took = ended - kernel.value("_failed_at")
    assert 0 <= took < bound, f"{method}: the cell ended {took:.2f} s after the failure"
    return took


def _next_cell_is_whole(kernel: Kernel, model: str, n: int = 2) -> None:
    ex = kernel.execute(_cell(model, n), timeout=120)
    said = [line for line in stderr_lines(ex) if not line.startswith("nbdist: new workers for ")]
    assert ex.error is None and said == [], said
    assert kernel.value("(res.complete, len(res.images))") == (True, len(PROMPTS))


def test_a_failure_at_each_step_ends_the_cell_and_the_next_works(kernel: Kernel, tiny_model: str) -> None:
    took: dict[str, float] = {}
    for method in ("run", "start", "receive"):
        _next_cell_is_whole(kernel, tiny_model)
        assert kernel.execute(INJECT.format(method=method)).error is None
        n = 1 if method == "start" else 2  # -n 1: new workers must start
        ex = kernel.execute(_cell(tiny_model, n=n), timeout=60)
        took[method] = _failed_in_one_line(kernel, ex, method, time.time())
    _next_cell_is_whole(kernel, tiny_model)

    assert kernel.execute(INJECT.format(method="cancel")).error is None  # the stop button reaches a broken cancel
    hook = OnFirstImage(kernel, lambda h: h.kernel.km.interrupt_kernel())
    prompts = [f"p{i}" for i in range(16)]
    ex = kernel.execute(_cell(tiny_model, steps=10, prompts=prompts), timeout=60, on_message=hook)
    took["cancel"] = _failed_in_one_line(kernel, ex, "cancel", time.time())
    assert hook.at is not None
    _next_cell_is_whole(kernel, tiny_model)

    assert kernel.execute(INJECT.format(method="stop")).error is None  # -n 1: the two warm workers are stopped
    ex = kernel.execute(_cell(tiny_model, n=1), timeout=60)
    # The run goes on: the old workers are killed (at most 5 s) and new ones start and make every image.
    took["stop"] = _failed_in_one_line(kernel, ex, "stop", time.time(), bound=30.0)
    assert kernel.value("(res.complete, len(res.images))") == (True, len(PROMPTS))  # killed instead
    _next_cell_is_whole(kernel, tiny_model, n=1)
    print("cell ended after the failure: " + ", ".join(f"{k} {v:.2f} s" for k, v in took.items()))
