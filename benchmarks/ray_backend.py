"""Ray actors (``--cluster``) against the forked pool on the same number of CPU workers, same process of measurement.

A local cluster of 1 head + 2 worker nodes (``ray.cluster_utils.Cluster``, one CPU each, no dashboard)
and the forked pool each make the same images of the tiny ``cpu`` pipeline with ``-n`` workers of one
thread; both are warmed by a first run and then timed over ``--repeat`` warm runs:

- images/s of a warm run (and Ray's ratio to the forked pool; target >= 0.9);
- first image of a warm run, against one image's latency in a plain loop in this process (one thread;
  target: <= latency + 0.3 s);
- kernel-side overhead: CPU time this process (the "kernel": pool thread, Ray driver) spends per image;
- the pixels: both backends must make the same images (<= 2/255).

The forked pool runs before Ray's threads exist in this process and again once the cluster is gone
and the driver disconnected, and the plain latency is taken before and after too: on a shared machine
the load drifts, and the medians then take both sides of the Ray runs. Ray advertises the machine's
network address, so run it in a network namespace with only loopback (as root):

    unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/ray_backend.py [--prompts 12] [--steps 4]'
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from typing import Any

import numpy as np

import nbdist


def timed_runs(model: str, prompts: list[str], repeat: int, **kw: Any) -> tuple[list[dict[str, float]], Any]:
    """One warm-up run, then ``repeat`` timed ones: images/s, first image s, kernel CPU ms per image."""
    nbdist.generate(model, prompts, observers=[], **kw)  # start (or replace) the workers; load the pipeline
    rows, result = [], None
    for _ in range(repeat):
        cpu = time.process_time()
        result = nbdist.generate(model, prompts, observers=[], **kw)
        spent = time.process_time() - cpu
        assert len([r for r in result if r.ok]) == len(prompts), result.worker_failures
        rows.append(
            {
                "images_per_s": len(prompts) / result.seconds,
                "first_s": result.first_image_seconds,
                "kernel_ms_per_image": 1000 * spent / len(prompts),
            }
        )
    return rows, result


def plain_latency(model: str, prompt: str, steps: int) -> float:
    """One image in this process with one thread (the median of three): what one worker takes per image."""
    import torch

    from nbdist.pipelines import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline(model, "float32")
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(3):
        start = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(i))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="cpu", help="tiny pipeline size (tiny or cpu)")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("-n", type=int, default=2, help="CPU workers of both backends")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        sys.exit("run inside a network namespace with only loopback: unshare -n sh -c 'ip link set lo up && ...'")
    from nbdist.tiny import ensure_tiny_pipeline

    model = str(ensure_tiny_pipeline(args.size))
    prompts = [f"benchmark prompt number {i}" for i in range(args.prompts)]
    common = {"seed": 0, "steps": args.steps, "num_processes": args.n}
    latencies = [plain_latency(model, prompts[0], args.steps)]
    fork_rows, fork_result = timed_runs(model, prompts, args.repeat, **common)
    nbdist.shutdown()

    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray_rows, ray_result = timed_runs(model, prompts, args.repeat, cluster=cluster.address, **common)
        nodes = len({r.node for r in ray_result})
    finally:
        nbdist.shutdown()
        ray.shutdown()
        cluster.shutdown()
    fork_rows += timed_runs(model, prompts, args.repeat, **common)[0]
    nbdist.shutdown()
    latencies.append(plain_latency(model, prompts[0], args.steps))
    latency = statistics.mean(latencies)
    diff = max(
        int(np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).max())
        for a, b in zip(fork_result, ray_result, strict=True)
    )
    report(args, fork_rows, ray_rows, latency, diff, nodes)


def report(args: argparse.Namespace, fork: list[dict[str, float]], ray: list[dict[str, float]], *extra: Any) -> None:
    latency, diff, nodes = extra

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(f"\n{args.prompts} images of the `{args.size}` pipeline, {args.steps} steps, -n {args.n} (1 thread each), ")
    runs = f"median of {args.repeat} warm Ray runs and of {2 * args.repeat} forked (before and after)"
    print(f"{runs}; one image alone: {latency:.2f} s; Ray actors on {nodes} node(s)\n")
    print("| backend | images/s | ratio | first image s | first - one image s | kernel CPU ms/image | each run |")
    print("|---|---|---|---|---|---|---|")
    key = "images_per_s"
    base = med(fork, key)
    for name, rows in (("forked pool (notebook_launcher)", fork), ("Ray actors (--cluster)", ray)):
        rate, first = med(rows, "images_per_s"), med(rows, "first_s")
        print(
            f"| {name} | {rate:.2f} | {rate / base:.2f} | {first:.2f} | {first - latency:+.2f} | "
            f"{med(rows, 'kernel_ms_per_image'):.1f} | {' '.join(f'{row[key]:.2f}' for row in rows)} |"
        )
    print(f"\nmax pixel difference between the backends' images: {diff}/255")


if __name__ == "__main__":
    main()
