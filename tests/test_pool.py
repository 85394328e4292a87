"""The warm pool through a real kernel: workers that stay up across cells, cancel, background runs, faults.

Every test drives ``%%distgen`` (or ``nbdist.generate``) in a real ipykernel over jupyter_client, with
real forked workers; the worker pids are read from the kernel's process tree.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kernel import Kernel
from test_faults import OnFirstImage, stderr_lines, wait_gone, workers_of

WIDGET = "application/vnd.jupyter.widget-view+json"
RUN = "%%distgen --model {model} -n 2 --steps {steps} --seed 0 -o {out}\n{prompts}"


def pids(kernel: Kernel) -> list[int]:
    return sorted(p.pid for p in workers_of(kernel.pid))


def test_same_workers_across_cells(kernel: Kernel, tiny_model: str) -> None:
    """The second cell reuses the workers: same pids, no fork, and its images are the same as a fresh run's."""
    ex = kernel.execute(RUN.format(model=tiny_model, steps=2, out="a", prompts="one\ntwo\nthree"))
    assert ex.error is None, ex.error
    first = pids(kernel)
    assert len(first) == 2
    ex = kernel.execute(RUN.format(model=tiny_model, steps=2, out="b", prompts="one\ntwo\nthree"))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert pids(kernel) == first
    assert kernel.value("sorted(w.pid for w in b.workers.values())") == first
    assert kernel.value("all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b))")
    # What changes per image never needs new workers (-k, -b, size, schedule, negative, seed).
    ex = kernel.execute(
        f"%%distgen --model {tiny_model} -n 2 --steps 1 -k 2 -b 2 --height 32 --width 48 --schedule dynamic "
        "--negative blur --seed 5 -o c\nx\ny"
    )
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert pids(kernel) == first and kernel.value("(len(c.images), c[0].image.size)") == (4, (48, 32))
    # Another -n replaces the pool, saying so in one line.
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 1 --steps 1 --seed 0 -o d\nx")
    assert ex.error is None
    assert [line for line in stderr_lines(ex) if "new workers" in line] != []
    assert len(pids(kernel)) == 1 and pids(kernel)[0] not in first


def test_a_failed_cell_keeps_the_workers_and_the_loaded_model(kernel: Kernel, tiny_model: str) -> None:
    """A cell refused before it runs (a typo in the model's name, a bad --param) costs no fork and no load.

    As a new user met it: ``--model dmeo`` failed, and the next ``--model demo`` started new workers
    ("pipeline object changed"): the failed load had dropped the cached demo model first.
    """
    demo = "%%distgen --model demo -n 1 --steps 1 --seed 0 -o {out}\na red circle"
    assert kernel.execute("import nbdist\nfrom nbdist.pipelines import cached_pipeline").error is None
    assert kernel.execute(demo.format(out="a")).error is None
    first, loaded = pids(kernel), kernel.value("id(cached_pipeline(str(nbdist.demo_model()), 'float32'))")
    ex = kernel.execute(demo.replace("demo", "dmeo", 1).format(out="typo"))
    assert "UsageError" in ex.stream("stderr") and "'dmeo'" in ex.stream("stderr"), ex.stream()
    ex = kernel.execute(demo.format(out="b"))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert pids(kernel) == first
    assert kernel.value("id(cached_pipeline(str(nbdist.demo_model()), 'float32'))") == loaded
    # Another model that loads but whose cell is refused: the demo workers stay all the same.
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 1 --steps 1 --param bogus=1\nx")
    assert "--param bogus" in ex.stream("stderr"), ex.stream()
    ex = kernel.execute(demo.format(out="c"))
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    assert pids(kernel) == first and kernel.value("(a[0].image.tobytes() == c[0].image.tobytes())")


STALE_SETUP = """
import torch, nbdist
torch.set_num_threads(1)  # reference calls in the kernel: no OpenMP spin-waiting against other load
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained({model!r})
pipe.set_progress_bar_config(disable=True)
def plain(prompt, seed):
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, guidance_scale=7.5, generator=generator).images[0]
def same(res):
    import numpy as np
    ref = plain(res[0].prompt, res[0].seed)
    return float(np.abs(np.asarray(ref, dtype=float) - np.asarray(res[0].image, dtype=float)).max())
"""

CHANGES = {
    "scheduler": "from diffusers import EulerDiscreteScheduler\n"
    "pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)",
    "component": "import copy\nvae = copy.deepcopy(pipe.vae)\n"
    "with torch.no_grad():\n    vae.decoder.conv_out.bias.add_(0.3)\npipe.vae = vae",
    "load_state_dict": "sd = {k: v + 0.05 for k, v in pipe.unet.state_dict().items()}\npipe.unet.load_state_dict(sd)",
    "fuse_qkv": "pipe.fuse_qkv_projections()\n"
    "with torch.no_grad():\n    [m.to_qkv.weight.mul_(1.1) for m in pipe.unet.modules() if hasattr(m, 'to_qkv')]",
    "inplace_add": "with torch.no_grad():\n    pipe.unet.conv_out.weight.add_(0.1)",
    "lora": "from peft import LoraConfig\n"
    "pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']))\n"
    "with torch.no_grad():\n    [p.normal_(0, 0.5) for n, p in pipe.unet.named_parameters() if 'lora_B' in n]",
}


def test_changed_pipe_is_never_served_stale(kernel: Kernel, tiny_model: str) -> None:
    """A --pipe object changed after the workers started: each time, the next run uses the changed pipeline.

    One kernel, the changes applied one after another (each on top of the last), so every case costs
    one run; after each, the image must equal a plain diffusers call on the pipeline as it is now.
    """
    assert kernel.execute(STALE_SETUP.format(model=tiny_model)).error is None
    ex = kernel.execute("%%distgen --pipe pipe -n 2 --steps 2 --seed 0 -o before\na fox\nb")
    assert ex.error is None, ex.error
    assert kernel.value("same(before)") <= 2
    for change, code in CHANGES.items():
        if change == "lora" and kernel.execute("import peft").error is not None:
            continue
        ex = kernel.execute(code)
        assert ex.error is None, (change, ex.error)
        ex = kernel.execute("%%distgen --pipe pipe -n 2 --steps 2 --seed 0 -o after\na fox\nb")
        assert ex.error is None, (change, ex.error)
        assert any("changed since its workers started" in line for line in stderr_lines(ex)), (change, ex.stream())
        assert kernel.value("same(after)") <= 2, f"{change}: the workers served the old pipeline"
        assert kernel.value("before[0].image.tobytes() != after[0].image.tobytes()"), change
        kernel.execute("before = after")
    # Unchanged: the same workers go on, no new line.
    ex = kernel.execute("%%distgen --pipe pipe -n 2 --steps 2 --seed 0 -o again\na fox\nb")
    assert ex.error is None and stderr_lines(ex) == [], ex.stream()


def test_interrupt_keeps_workers_and_finished_images(kernel: Kernel, tiny_model: str, tmp_path: Path) -> None:
    prompts = "\n".join(f"prompt number {i}" for i in range(16))
    hook = OnFirstImage(kernel, lambda h: h.kernel.km.interrupt_kernel())
    ex = kernel.execute(
        f"%%distgen --model {tiny_model} -n 2 --steps 20 --seed 0 -o res --save-dir out\n{prompts}", on_message=hook
    )
    replied = time.monotonic()
    assert hook.at is not None and len(hook.worker_pids) == 2
    assert ex.error is None, ex.error
    lines = stderr_lines(ex)
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and lines[0].endswith(" of 16 images, kept in res")
    step = kernel.value("max(r.seconds for r in res if r.ok) / 20")
    print(f"interrupt: cell over {replied - hook.at:.2f} s after it (one step ~{step:.3f} s)")
    assert replied - hook.at < 2.0
    assert pids(kernel) == sorted(hook.worker_pids), "the workers were not kept"
    done = kernel.value("sorted(r.index for r in res if r.ok)")
    assert 1 <= len(done) < 16 and kernel.value("len(res.missing)") == 16 - len(done)
    assert sorted(int(p.name[:5]) for p in (tmp_path / "out").glob("*.png")) == done
    # The next cell starts at once on the same processes and is complete.
    again = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 -o res2\none\ntwo")
    assert again.error is None and stderr_lines(again) == []
    assert kernel.value("(res2.complete, sorted(w.pid for w in res2.workers.values()))") == (True, hook.worker_pids)


def test_background_run_while_other_cells_run(kernel: Kernel, tiny_model: str) -> None:
    prompts = "\n".join(f"p{i}" for i in range(6))
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 8 --seed 0 --background -o h\n{prompts}")
    assert ex.error is None, ex.error
    assert ex.wall < 30
    # The kernel is free: another cell runs while the images arrive.
    assert kernel.value("1 + 1") == 2
    assert kernel.value("type(h).__name__") == "RunHandle"
    assert kernel.value("(r := h.wait(120)).complete and len(r.images) == 6 and h.done")
    # The gallery's Stop button (a widget message from the browser) cancels a background run.
    ex = kernel.execute(
        f"%%distgen --model {tiny_model} -n 2 --steps 30 --seed 0 --background -o hs\n" + prompts + "\n" + prompts
    )
    view = next(m for m in ex.of_type("display_data") if WIDGET in m.content["data"])
    model_id = view.content["data"][WIDGET]["model_id"]
    msg = kernel.kc.session.msg(
        "comm_msg", {"comm_id": model_id, "data": {"method": "custom", "content": {"type": "stop"}}}
    )
    kernel.kc.shell_channel.send(msg)
    assert kernel.value("(r := hs.wait(60)).interrupted and len(r.missing) > 0")
    # A second background run queues behind a first; cancel() of the second keeps the first.
    kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 8 --seed 1 --background -o h1\n{prompts}")
    kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 8 --seed 2 --background -o h2\n{prompts}")
    kernel.execute("h2.cancel()")
    assert kernel.value("(h1.wait(120).complete, h2.wait(30).interrupted, len(h2.wait().images))") == (True, True, 0)


def test_worker_killed_between_runs_and_during_a_run(kernel: Kernel, tiny_model: str) -> None:
    ex = kernel.execute(RUN.format(model=tiny_model, steps=1, out="a", prompts="x\ny"))
    assert ex.error is None
    first = pids(kernel)
    os.kill(first[0], signal.SIGKILL)
    wait_gone(first, timeout=5.0)  # the pool notices and the group goes
    ex = kernel.execute(RUN.format(model=tiny_model, steps=1, out="b", prompts="x\ny"))
    assert ex.error is None and kernel.value("b.complete")
    second = pids(kernel)
    assert len(second) == 2 and not set(second) & set(first)

    killed: list[int] = []

    def kill_one(h: OnFirstImage) -> None:
        killed.append(h.worker_pids[-1])
        os.kill(h.worker_pids[-1], signal.SIGKILL)

    hook = OnFirstImage(kernel, kill_one)
    prompts = "\n".join(f"p{i}" for i in range(16))
    ex = kernel.execute(RUN.format(model=tiny_model, steps=10, out="c", prompts=prompts), on_message=hook)
    assert ex.error is None and killed
    assert "Traceback" not in ex.stream() and "E1" not in ex.stream()
    assert any(f"worker process {killed[0]} killed by SIGKILL" in line for line in stderr_lines(ex))
    done, missing = kernel.value("(len(c.images), len(c.missing))")
    assert done >= 1 and done + missing == 16
    # The next run gets a full pool again.
    ex = kernel.execute(RUN.format(model=tiny_model, steps=1, out="d", prompts="x\ny"))
    assert ex.error is None and kernel.value("d.complete") and len(pids(kernel)) == 2


def test_shutdown_status_and_idle_timeout(tiny_model: str, tmp_path: Path) -> None:
    with Kernel(cwd=str(tmp_path), env={**os.environ, "NBDIST_IDLE_TIMEOUT": "3"}) as k:
        assert k.execute("%load_ext nbdist").error is None
        assert k.execute(RUN.format(model=tiny_model, steps=1, out="a", prompts="x")).error is None
        workers = pids(k)
        status = k.execute("%distgen --status").stream("stdout")
        assert "2 warm worker(s)" in status and str(workers[0]) in status and "stop after 3 s idle" in status
        wait_gone(workers, timeout=10.0)  # the idle timeout stops them
        assert k.execute(RUN.format(model=tiny_model, steps=1, out="b", prompts="x")).error is None
        workers = pids(k)
        assert len(workers) == 2
        ex = k.execute("%distgen --shutdown")
        assert "workers stopped" in ex.stream("stdout")
        wait_gone(workers, timeout=1.0)
        assert "no warm workers" in k.execute("%distgen --status").stream("stdout")
        assert k.execute(RUN.format(model=tiny_model, steps=1, out="c", prompts="x")).error is None
        workers = pids(k)
        kernel_pid = k.pid
    wait_gone([*workers, kernel_pid], timeout=10.0)  # kernel shutdown leaves no process behind


def test_100_cells_on_one_pool(kernel: Kernel, tiny_model: str) -> None:
    """100 small cells: same workers; kernel threads, fds and memory flat; worker memory flat.

    The cells call ``nbdist.generate`` without a gallery: a gallery keeps its run's full-size images in
    the kernel on purpose (a click on any past gallery gets the full-size PNG), which is the user's
    data, not the pool's. What is measured here is what the pool itself holds per run.
    """
    # IPython keeps every cell's value (Out[n], _, __): that is the user's history, not a leak; off here.
    setup = """
import psutil, gc, nbdist, os, time
get_ipython().displayhook.do_full_cache = False
me = psutil.Process()
def fds():
    # The kernel's open files by number. Left out: IPython's history thread writes each cell to its
    # sqlite database as the next cell starts, a journal file open for that moment (not a leak, not
    # ours), and the listing's own handle on /proc.
    names = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            names[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return {fd: name for fd, name in names.items() if "history.sqlite" not in name and "/proc/" not in name}
def snapshot(baseline_fds=None):
    # ipykernel closes a finished thread's iopub event pipe itself, every 10 s, and zmq releases the
    # socket's fd asynchronously in its reaper thread: run that clean-up now, and again while waiting
    # (up to 5 s) for the count to come back to the baseline. The count returned is the one the wait
    # ended on: a leak stays above the baseline for the whole wait, a passing open file does not.
    def event_pipe_gc():
        gc.collect()
        try:
            get_ipython().kernel.iopub_thread._event_pipe_gc().send(None)
        except StopIteration:
            pass
    event_pipe_gc()
    count = len(fds())
    deadline = time.monotonic() + 5
    while baseline_fds is not None and count > baseline_fds and time.monotonic() < deadline:
        time.sleep(0.05)
        event_pipe_gc()
        count = len(fds())
    workers = [psutil.Process(p) for p in sorted(w.pid for w in res.workers.values())]
    return (me.num_threads(), count, me.memory_info().rss, [w.memory_info().rss for w in workers])
def thread_names():
    import threading
    return sorted(t.name for t in threading.enumerate())
"""
    cell = f"res = nbdist.generate({tiny_model!r}, ['a', 'b'], num_processes=2, steps=1, seed=0, observers=[])"
    assert kernel.execute(setup).error is None
    for _ in range(20):  # warm up: caches, first-use allocations, allocator arenas
        assert kernel.execute(cell).error is None
    before, first = kernel.value("snapshot()"), pids(kernel)
    fds_before, threads_before = kernel.value("fds()"), kernel.value("thread_names()")
    start = time.monotonic()
    for _ in range(100):
        ex = kernel.execute(cell)
        assert ex.error is None and stderr_lines(ex) == [], ex.stream()
    wall = time.monotonic() - start
    after = kernel.value(f"snapshot(baseline_fds={before[1]})")
    print(f"100 cells in {wall:.1f} s; kernel threads/fds/rss/worker rss before {before}, after {after}")
    assert pids(kernel) == first
    assert after[0] <= before[0], "threads grew"
    fds_after = kernel.value("fds()")
    new_fds = {fd: name for fd, name in fds_after.items() if fds_before.get(fd) != name}
    threads_after = kernel.value("thread_names()")
    assert after[1] <= before[1], f"open files grew: {new_fds}; threads {threads_before} -> {threads_after}"
    assert after[2] - before[2] < 5 * 2**20, "kernel memory grew by more than 5 MB"
    for b, a in zip(before[3], after[3], strict=True):
        assert a - b < 5 * 2**20, "worker memory grew by more than 5 MB"
