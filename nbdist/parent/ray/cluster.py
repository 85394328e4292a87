"""Connect the kernel to a Ray cluster (``--cluster``) and say what it offers, before anything starts there.

A cluster that cannot be reached is one ``NbdistUsageError`` line: for ``HOST:PORT`` a plain TCP
connect with a short timeout first, because Ray's own client keeps retrying for a long while before it
gives up. The kernel joins the cluster as a Ray driver once (``ray.init``) and stays joined: the warm
actors belong to this driver and end with it. nbdist never starts a cluster itself.
"""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass, field

from ...cluster_address import host_port
from ...errors import NbdistUsageError
from ..machine.gpus import GpuQuery
from .gpu_kinds import cluster_gpus

__all__ = ["ClusterFacts", "connect", "first_line", "free", "hold", "leave"]

REACH_TIMEOUT = 5.0  # seconds a TCP connect to the cluster's address may take
_joined: str | None = None  # the address this kernel joined as a driver, None when it has not
_held: dict[str, int] = {}  # GPUs / CPUs this kernel's own actors hold (reserved in their placement group)


@dataclass(frozen=True)
class ClusterFacts:
    """What the cluster has in all, and free for this kernel (free now, or held by its own warm actors).

    Actors are one per GPU, or one per CPU on a cluster without GPUs.
    """

    address: str
    gpus: int
    cpus: int
    nodes: int
    free_gpus: int = 0
    free_cpus: int = 0
    kinds: GpuQuery = field(default_factory=GpuQuery)  # the GPU kinds its nodes name, for the dtype rule


def connect(address: str) -> ClusterFacts:
    """Join the cluster at ``address`` (once per kernel) and count its GPUs, CPUs and nodes."""
    target = host_port(address)
    if target is not None:
        _reachable(address, *target)
    try:
        import ray
    except ImportError as exc:
        raise NbdistUsageError("--cluster needs Ray: pip install 'nbdist[ray]'") from exc
    global _joined
    if ray.is_initialized() and _joined not in (None, address):
        leave()  # another cluster than last time: its actors went with the pool's previous group
    if not ray.is_initialized():
        _joined = address
        try:
            ray.init(address=address, namespace="nbdist", log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # ConnectionError, RuntimeError, ...: Ray's wording varies by form and version
            raise NbdistUsageError(f"--cluster {address}: no Ray cluster there ({first_line(exc)})") from None
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    total = (int(resources.get("GPU", 0)), int(resources.get("CPU", 0)))
    free_gpus, free_cpus = free("GPU") + _held.get("GPU", 0), free("CPU") + _held.get("CPU", 0)
    return ClusterFacts(address, *total, nodes, free_gpus, free_cpus, cluster_gpus(resources))


def free(unit: str) -> int:
    """``GPU`` or ``CPU`` slots no one holds now (Ray's ``available_resources``)."""
    import ray

    return int(ray.available_resources().get(unit, 0))


def hold(unit: str, count: int) -> None:
    """This kernel's actors now hold ``count`` more (negative: fewer) ``unit`` slots: still theirs to reuse."""
    _held[unit] = max(0, _held.get(unit, 0) + count)


def _reachable(address: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT):
            pass
    except OSError as exc:
        raise NbdistUsageError(f"--cluster {address}: cannot reach {host}:{port} ({exc.strerror or exc})") from None


def first_line(exc: BaseException) -> str:
    """The first line of an error: Ray's exceptions carry pages of remote traceback after it."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def leave() -> None:
    """Disconnect the kernel from its cluster, if it joined one (``nbdist`` joined it, or the user did).

    Called before forking local workers: Ray's driver runs gRPC and event-loop threads in the kernel,
    and a fork taken while they hold locks can leave the child stuck. Only after the pool has stopped
    the actors, which belong to this driver and would end with it anyway.
    """
    global _joined
    ray = sys.modules.get("ray")  # never imported here just to ask
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    _joined = None
    _held.clear()
