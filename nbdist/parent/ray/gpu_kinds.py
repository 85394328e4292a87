"""The cluster's GPU kinds, from Ray's ``accelerator_type:<KIND>`` resources, as the dtype rule reads GPUs.

On one machine the dtype rule (``machine/dtypes.py``) reads each GPU's compute capability from
``nvidia-smi``; the kernel of a ``--cluster`` run may have no GPU at all, but every Ray node advertises
its GPUs' kind (``accelerator_type:A100``). The kinds map to their compute capability here, so Flux or
SD3 gets bfloat16 only where every kind on the cluster computes it, as on one machine. A kind not in
the table, or a cluster whose nodes name none, is "cannot tell" (float16, and the note says so).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..machine.gpus import Gpu, GpuQuery

__all__ = ["COMPUTE_CAPABILITY", "cluster_gpus"]

_PREFIX = "accelerator_type:"
# Ray's names (ray.util.accelerators) -> compute capability (NVIDIA's CUDA GPU table).
COMPUTE_CAPABILITY = {
    "K80": 3.7,
    "P4": 6.1,
    "P100": 6.0,
    "V100": 7.0,
    "T4": 7.5,
    "A10G": 8.6,
    "A10": 8.6,
    "L4": 8.9,
    "L40S": 8.9,
    "A100": 8.0,
    "A100-40G": 8.0,
    "A100-80G": 8.0,
    "H100": 9.0,
    "H200": 9.0,
    "H20": 9.0,
    "GH200": 9.0,
    "B200": 10.0,
    "B300": 10.3,
    "GB200": 10.0,
    "GB300": 10.3,
    "RTX-PRO-6000": 12.0,
}


def cluster_gpus(resources: Mapping[str, float]) -> GpuQuery:
    """One ``Gpu`` per kind the cluster's nodes advertise (``ray.cluster_resources()``), for ``default_dtype``."""
    kinds = sorted(name[len(_PREFIX) :] for name in resources if name.startswith(_PREFIX))
    if not kinds:
        return GpuQuery([], "the cluster's nodes do not name their GPU kind (no accelerator_type resource)")
    gpus = [Gpu(i, i, "", kind, 0, 0, COMPUTE_CAPABILITY.get(kind.upper())) for i, kind in enumerate(kinds)]
    unknown = [g.name for g in gpus if g.compute_cap is None]
    return GpuQuery(gpus, f"the compute capability of a {unknown[0]} is not known to nbdist" if unknown else None)
