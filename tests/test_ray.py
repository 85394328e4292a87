"""``--cluster``: the same runs on Ray actors of a 3-node ``ray.cluster_utils.Cluster`` started here.

The cluster (one CPU per node, no dashboard) starts once for the module. Ray advertises the machine's
network address even when told 127.0.0.1, so these tests run only inside a network namespace with
nothing but loopback (``scripts/test.sh`` runs them so: ``unshare -n``); elsewhere they are skipped,
and ``NBDIST_SKIP_RAY=1`` makes that script leave them out.
"""

from __future__ import annotations

import _thread
import os
import socket
import subprocess
import sys
import time

import pytest
from test_generate import max_diff, reference

import nbdist
from nbdist.options import NbdistUsageError

PROMPTS = ["a dog", "a cat", "a lighthouse", "a bowl of ramen", "a red bicycle", "a snowy mountain"]
STEPS = 2


def _only_loopback() -> bool:
    """This network namespace has no interface but ``lo``: Ray cannot send anything off this machine."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


needs_namespace = pytest.mark.skipif(
    not _only_loopback(), reason="run inside `unshare -n` with only loopback up (scripts/test.sh does)"
)


@pytest.fixture(scope="module")
def forked(tiny_model: str) -> nbdist.GenerationResult:
    """The forked pool's images, made before Ray's threads exist in this process (forking after them is unsafe)."""
    result = nbdist.generate(tiny_model, PROMPTS, seed=0, steps=STEPS, num_processes=2)
    nbdist.shutdown()
    return result


@pytest.fixture(scope="module")
def cluster(forked):
    """Head + 2 worker nodes, one CPU each, no dashboard; the kernel side joins it through nbdist."""
    import ray
    from ray.cluster_utils import Cluster

    started = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [started.add_node(num_cpus=1) for _ in range(2)]
    started.wait_for_nodes()
    try:
        yield started, workers
    finally:
        nbdist.shutdown()
        ray.shutdown()
        started.shutdown()


@pytest.fixture(scope="module")
def run(cluster, tiny_model: str):
    """``nbdist.generate`` of the tiny model on the cluster's actors."""

    def on_cluster(prompts=PROMPTS, **kw):
        kw = {"seed": 0, "steps": STEPS, **kw}  # -n: one actor per CPU of the cluster
        return nbdist.generate(tiny_model, prompts, cluster=cluster[0].address, **kw)

    on_cluster.address = cluster[0].address
    return on_cluster


@pytest.mark.ray
@needs_namespace
def test_images_equal_plain_call_and_forked_pool_from_three_nodes(run, forked, tiny_pipe) -> None:
    result = run()
    assert [r.index for r in result if r.ok] == list(range(len(PROMPTS))), result.worker_failures
    for record, twin in zip(result, forked, strict=True):
        assert max_diff(record.image, reference(tiny_pipe, record.prompt, record.seed)) <= 2, record.index
        assert max_diff(record.image, twin.image) <= 2, record.index
    import ray

    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len({r.node for r in result}) >= 3 and {r.node for r in result} <= alive
    assert {w.node for w in result.workers.values()} == alive
    assert all(w.device == "cpu" and w.pid > 0 for w in result.workers.values())


@pytest.mark.ray
@needs_namespace
def test_second_cell_reuses_the_actors_and_background_works(run) -> None:
    before = nbdist.status().pids
    handle = run(PROMPTS[:3], background=True)
    result = handle.wait(120)
    assert len(before) == 3 and nbdist.status().pids == before
    assert [r.ok for r in result] == [True] * 3 and not result.worker_failures


@pytest.mark.ray
@needs_namespace
def test_stop_keeps_the_actors(run) -> None:
    before = nbdist.status().pids
    handle = run(PROMPTS * 4, background=True)
    deadline = time.monotonic() + 120
    while not len(handle) and time.monotonic() < deadline:
        handle.wait_briefly(0.05)
    handle.cancel()
    result = handle.wait(60)
    assert result.interrupted and 1 <= len([r for r in result if r.ok]) < len(PROMPTS) * 4
    assert not result.worker_failures and nbdist.status().pids == before
    assert [r.ok for r in run(PROMPTS[:1])] == [True]


class _InterruptOnFirstImage:
    """An observer that sends the waiting main thread a KeyboardInterrupt (Ctrl-C) when an image arrives."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_start(self, run) -> None:
        pass

    def on_message(self, msg) -> None:
        from nbdist.messages import ImageReady

        if self.at is None and isinstance(msg, ImageReady):
            self.at = time.monotonic()
            _thread.interrupt_main()

    def on_end(self, result) -> None:
        pass


def _inject(monkeypatch, method: str) -> list[float]:
    """``RayActorGroup.method`` raises once (then is itself again); returns when it did."""
    from nbdist.parent.ray.actors import RayActorGroup

    real, failed = getattr(RayActorGroup, method), []

    def broken(self, *args, **kwargs):
        monkeypatch.setattr(RayActorGroup, method, real)
        failed.append(time.monotonic())
        raise RuntimeError(f"injected failure in {method}")

    monkeypatch.setattr(RayActorGroup, method, broken)
    return failed


def _fails_in_one_line(result, method: str, failed: list[float], bound: float = 5.0) -> float:
    ended = time.monotonic()
    assert failed and ended - failed[0] < bound, f"{method}: ended {ended - failed[0]:.2f} s after the failure"
    lines = [f.error for f in result.worker_failures]
    assert len(lines) == 1 and f"RuntimeError: injected failure in {method}" in lines[0], lines
    assert "\n" not in lines[0]
    return ended - failed[0]


@pytest.mark.ray
@needs_namespace
def test_a_failure_at_each_step_ends_the_run_in_one_line_and_the_next_works(run, monkeypatch) -> None:
    """Each step of the ``WorkerBackend`` raising once: the call returns within 5 s (1 s of a Ctrl-C), and
    the next call gives every image. One chain on one actor, so that each failure's next call starts the
    actor the following failure meets (each failure costs the actors: starting them is the slow part)."""
    took: dict[str, float] = {}

    def whole() -> None:
        after = run(PROMPTS[:3], num_processes=1)
        assert [r.index for r in after if r.ok] == [0, 1, 2] and not after.worker_failures

    whole()
    for method in ("run", "receive"):
        failed = _inject(monkeypatch, method)
        took[method] = _fails_in_one_line(run(PROMPTS, num_processes=1), method, failed)
        whole()
    failed, interrupt = _inject(monkeypatch, "cancel"), _InterruptOnFirstImage()
    result = run(PROMPTS, num_processes=1, observers=[interrupt], steps=6)
    took["cancel"] = _fails_in_one_line(result, "cancel", failed)
    assert interrupt.at is not None and time.monotonic() - interrupt.at < 1.0
    whole()
    failed = _inject(monkeypatch, "stop")  # -n 2: the warm actors are stopped, and killed instead
    result = run(PROMPTS, num_processes=2)
    took["stop"] = _fails_in_one_line(result, "stop", failed, bound=120.0)  # new actors make every image
    assert result.complete
    failed = _inject(monkeypatch, "start")  # -n 1: new actors again
    took["start"] = _fails_in_one_line(run(PROMPTS, num_processes=1), "start", failed)
    whole()
    print("Ray: the call returned after the failure: " + ", ".join(f"{k} {v:.2f} s" for k, v in took.items()))


@pytest.mark.ray
@needs_namespace
def test_a_pipe_ray_cannot_pickle_ends_the_run_in_one_line(run, tiny_pipe) -> None:
    """``ray.put`` of a pipeline holding a lock fails: said in one line, naming what Ray could not pickle."""
    import threading

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_pipe.components)
    pipe.lock = threading.Lock()
    started = time.monotonic()
    result = nbdist.generate(pipe, PROMPTS[:2], cluster=run.address, seed=0, steps=STEPS)
    assert time.monotonic() - started < 5.0
    lines = [f.error for f in result.worker_failures]
    assert len(lines) == 1 and lines[0].startswith("starting the workers failed: ") and "\n" not in lines[0], lines
    assert "cannot be sent to the cluster's nodes (TypeError: cannot pickle '_thread.lock' object)" in lines[0]
    assert len(result.missing) == 2  # the next run working after a failure: the chain test above


@pytest.mark.ray
@needs_namespace
def test_a_node_removed_mid_run_loses_no_finished_image(cluster, run) -> None:
    started, workers = cluster
    # -n 3: one actor per node. Without it the run takes the slots free at that moment, and the actors of
    # the run before may not have given theirs back yet (Ray releases them asynchronously): once only the
    # head's actor was placed, no image came from a worker node and the loop below ran to its deadline.
    handle = run(PROMPTS * 2, background=True, steps=6, num_processes=3)
    victims = {node.node_id: node for node in workers}
    deadline = time.monotonic() + 120
    while not any(r.node in victims for r in handle) and not handle.done and time.monotonic() < deadline:
        handle.wait_briefly(0.05)
    lost = next((r.node for r in handle if r.node in victims), None)
    assert lost is not None, f"no image from a worker node: {[(r.index, r.node) for r in handle]}"
    made_there = [r for r in handle if r.node == lost]  # the other worker node may have finished some too
    started.remove_node(victims[lost])
    result = handle.wait(180)
    assert [r.index for r in result if r.ok] == list(range(len(PROMPTS) * 2)) and not result.missing
    assert {r.index for r in made_there} <= {r.index for r in result if r.node == lost}
    lines = [f.error for f in result.worker_failures]
    assert len(lines) == 1 and f"node {lost[:8]}" in lines[0], lines
    after = run(PROMPTS[:2], num_processes=2)  # the two nodes left (an explicit -n waits for their slots)
    assert [r.ok for r in after] == [True, True] and len(after.workers) == 2 and lost not in {r.node for r in after}


class _Phases:
    """An observer that keeps the phases a run reports before its workers speak ("waiting for ...")."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def on_start(self, run) -> None:
        pass

    def on_message(self, msg) -> None:
        pass

    def on_phase(self, text: str) -> None:
        self.said.append(text)

    def on_end(self, result) -> None:
        pass


@pytest.mark.ray
@needs_namespace
def test_a_busy_cluster_is_sized_from_what_is_free_and_waited_on_for_a_bound(run) -> None:
    """Another job holds a CPU: without -n the run takes the CPUs left; with more it waits, saying so, and is
    refused after --cluster-wait naming what was free."""
    import ray

    class Holder:  # another job's actor holding one CPU (defined here: Ray sends it by value)
        def ping(self) -> int:
            return 1

    nbdist.shutdown()  # this kernel's own actors hold nothing now
    holder = ray.remote(num_cpus=1)(Holder).remote()
    try:
        ray.get(holder.ping.remote(), timeout=60)
        free = int(ray.available_resources().get("CPU", 0))
        assert free >= 1
        result = run(PROMPTS[:3])
        assert result.complete and result.num_processes == free and len(result.workers) == free
        waiting = _Phases()
        started = time.monotonic()
        refused = run(PROMPTS[:3], num_processes=free + 1, cluster_wait=1.5, observers=[waiting])
        took = time.monotonic() - started
        lines = [f.error for f in refused.worker_failures]
        assert len(lines) == 1 and f"{free + 1} CPU(s) asked, {free} free after 1.5 s" in lines[0], lines
        assert f"ask for at most {free} with -n" in lines[0] and "\n" not in lines[0]
        assert f"waiting for {free + 1} CPUs on the cluster, {free} free" in waiting.said, waiting.said
        assert took < 1.5 + 5.0 and len(refused.missing) == 3
        print(f"busy cluster: refused {took:.2f} s after the call (--cluster-wait 1.5)")
    finally:
        ray.kill(holder)
    assert [r.ok for r in run(PROMPTS[:1])] == [True]  # the next run without -n takes every CPU again


@pytest.mark.ray
@needs_namespace
def test_refine_on_the_cluster_reads_its_init_on_the_actors_nodes(run, forked, tiny_pipe) -> None:
    """``--init`` files live on the kernel's disk: the actors get their bytes and write their own copies."""
    import torch
    from diffusers import AutoPipelineForImage2Image

    init = forked[0].image
    result = run(["a green lighthouse"], init=init, strength=0.5)
    assert [r.ok for r in result] == [True], result.worker_failures or result.errors
    plain = AutoPipelineForImage2Image.from_pipe(tiny_pipe)(
        "a green lighthouse",
        image=init,
        strength=0.5,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(result[0].seed),
    ).images[0]
    assert max_diff(result[0].image, plain) <= 2


@pytest.mark.ray
@needs_namespace
def test_dtype_rule_reads_the_gpu_kinds_the_nodes_name(cluster, tmp_path) -> None:
    """Flux gets bfloat16 only where every GPU kind on the cluster computes it, as on one machine: nodes that
    say ``accelerator_type:L4`` (8.9) and then also ``T4`` (7.5). Plans only: nothing runs on these GPUs."""
    import json

    from nbdist.options import GenerateOptions
    from nbdist.parent.planning.plan import plan_run

    started, _ = cluster
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    options = GenerateOptions(cluster=started.address, device="cuda", num_processes=1, save=False)
    added = [started.add_node(num_cpus=0, num_gpus=1, resources={"accelerator_type:L4": 1})]
    try:
        started.wait_for_nodes()
        plan = plan_run(str(flux), ["a dog"], options)
        assert plan.dtype == "bfloat16" and not plan.notes, plan.notes
        added.append(started.add_node(num_cpus=0, num_gpus=1, resources={"accelerator_type:T4": 1}))
        started.wait_for_nodes()
        plan = plan_run(str(flux), ["a dog"], options)
        assert plan.dtype == "float16" and any("T4, compute capability 7.5, lacks bfloat16" in n for n in plan.notes)
    finally:
        for node in added:
            started.remove_node(node)


@pytest.mark.ray
@needs_namespace
def test_shutdown_leaves_no_actor(run) -> None:
    from ray._private import state

    assert nbdist.status().pids
    assert nbdist.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [a for a in state.actors().values() if a["State"] != "DEAD"]
        if not alive:
            break
        time.sleep(0.1)  # polling Ray's own record of the actors, not waiting in place of it
    assert alive == []


@pytest.mark.ray
@needs_namespace
def test_a_local_run_after_the_cluster_leaves_ray_before_forking(run, forked, tiny_model: str) -> None:
    """Back to this machine's workers in the same kernel: the driver disconnects first, then the fork is safe."""
    import ray

    run(PROMPTS[:1])
    assert ray.is_initialized()
    local = nbdist.generate(tiny_model, PROMPTS[:2], seed=0, steps=STEPS, num_processes=2)
    assert not ray.is_initialized() and all(r.node is None for r in local)
    for record, twin in zip(local, forked, strict=False):
        assert max_diff(record.image, twin.image) == 0, record.index
    nbdist.shutdown()


def test_unreachable_cluster_is_one_line_before_anything_starts(tiny_model: str) -> None:
    started = time.monotonic()
    with pytest.raises(NbdistUsageError, match=r"^--cluster 127\.0\.0\.1:1: cannot reach 127\.0\.0\.1:1") as err:
        nbdist.generate(tiny_model, ["a dog"], cluster="127.0.0.1:1")
    assert "\n" not in str(err.value) and time.monotonic() - started < 10
    with pytest.raises(NbdistUsageError, match="write auto or HOST:PORT"):
        nbdist.generate(tiny_model, ["a dog"], cluster="no-port-here")


def test_ray_client_addresses_are_refused_up_front(tiny_model: str, monkeypatch, capsys, tmp_path) -> None:
    """Ray Client cannot run the streaming calls every batch is (ray#43357): one line naming what works,
    before anything connects, from the API, the environment and the CLI alike."""
    from nbdist.cli import main

    started = time.monotonic()
    with pytest.raises(NbdistUsageError) as err:
        nbdist.generate(tiny_model, ["a dog"], cluster="ray://127.0.0.1:10001")
    line = str(err.value)
    assert time.monotonic() - started < 5.0 and "\n" not in line
    assert line.startswith("--cluster ray://127.0.0.1:10001: Ray Client (ray://) cannot stream")
    assert "--cluster auto" in line and "HOST:6379" in line and "ray job submit" in line
    monkeypatch.setenv("NBDIST_CLUSTER", "ray://head-svc.ns.svc.cluster.local:10001")
    with pytest.raises(NbdistUsageError, match="Ray Client"):
        nbdist.generate(tiny_model, ["a dog"])
    monkeypatch.delenv("NBDIST_CLUSTER")
    args = ["generate", "--model", tiny_model, "--prompt", "a dog", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--cluster", "ray://h:10001"])
    said = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "\n" not in said and "Ray Client (ray://) cannot stream" in said, said


def test_ray_is_imported_only_for_a_cluster(tiny_model: str) -> None:
    code = (
        "import sys, nbdist; "
        f"nbdist.generate({tiny_model!r}, ['a dog'], steps=1, num_processes=1, seed=0); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    env = {**os.environ, "NBDIST_CLUSTER": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


def test_cluster_addresses_and_the_environment(monkeypatch, tiny_model: str) -> None:
    from nbdist.cluster_address import cluster_from_env, host_port

    assert host_port("auto") is None
    assert host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    monkeypatch.setenv("NBDIST_CLUSTER", "auto")
    assert cluster_from_env(None) == "auto" and cluster_from_env("local") is None
    monkeypatch.setenv("NBDIST_CLUSTER", "local")
    assert cluster_from_env(None) is None and cluster_from_env("h:1") == "h:1"
    with pytest.raises(NbdistUsageError, match="--offload places a model within one machine"):
        nbdist.generate(tiny_model, ["a dog"], cluster="auto", offload="model")
    with pytest.raises(NbdistUsageError, match="port 70000 is not a TCP port"):
        nbdist.generate(tiny_model, ["a dog"], cluster="h:70000")


@pytest.mark.ray
@needs_namespace
def test_flux_loaded_by_the_actors_alone_gets_its_size_steps_and_previews(cluster, tmp_path) -> None:
    """A model id on the cluster: the kernel loads nothing, and still knows each image's size and steps.

    They come from the model's config files (``model_files.py``). Before, the kernel's call settings had
    no size and one step: every Flux image failed in its first preview (``_unpack_latents`` of a None
    height), the progress read "k/1" and the manifest recorded steps and guidance as None.
    """
    import json

    import torch

    from nbdist.pipelines import load_pipeline
    from nbdist.tiny_families import ensure_family

    folder, out = str(ensure_family("flux")), tmp_path / "out"
    previews: list[tuple[int, int]] = []
    result = nbdist.generate(
        folder, PROMPTS[:2], cluster=cluster[0].address, seed=0, save_dir=str(out),
        on_preview=lambda index, step, image: previews.append((index, step)),
    )  # fmt: skip
    assert [r.ok for r in result] == [True, True], result.worker_failures
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {(m["steps"], m["guidance"], m["height"], m["width"]) for m in lines} == {(28, 3.5, 128, 128)}
    assert {index for index, _ in previews} == {0, 1} and max(step for _, step in previews) == 28
    pipe = load_pipeline(folder, "float32")
    pipe.set_progress_bar_config(disable=True)
    for record in result:
        plain = pipe(record.prompt, generator=torch.Generator("cpu").manual_seed(record.seed)).images[0]
        assert max_diff(record.image, plain) <= 2, record.index
