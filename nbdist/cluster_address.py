"""``--cluster ADDRESS``: which Ray cluster a run goes to, checked before anything connects.

Only text is handled here (no ``ray`` import): the address forms nbdist can use, ``NBDIST_CLUSTER`` as
the default, and the options that mean one machine's processes and so cannot go with a cluster.

Ray Client addresses (``ray://HOST:PORT``) are refused: Ray Client cannot run ``num_returns="streaming"``
calls (ray-project/ray#43357, closed as won't fix), and every batch is one, so that images reach the
gallery as each is decoded. The refusal names what works instead.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import NbdistUsageError

__all__ = ["ENV", "check_cluster_options", "cluster_from_env", "host_port", "refuse_ray_client"]

ENV = "NBDIST_CLUSTER"
_LOCAL = ("", "local", "none")  # NBDIST_CLUSTER=local (or --cluster local) keeps a run on this machine
_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_ONE_MACHINE = {"device_map": "--device-map", "offload": "--offload", "max_memory": "--max-memory"}


def cluster_from_env(given: str | None) -> str | None:
    """The cluster a run uses: ``--cluster``, else ``NBDIST_CLUSTER``; ``local`` (or empty) means this machine."""
    value = given if given is not None else os.environ.get(ENV)
    if value is None or value.strip().lower() in _LOCAL:
        return None
    return value.strip()


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT``; None for ``auto``."""
    if address == "auto":
        return None
    refuse_ray_client(address)
    match = _ADDRESS.match(address)
    if match is None:
        raise NbdistUsageError(f"--cluster {address!r}: write auto or HOST:PORT")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise NbdistUsageError(f"--cluster {address!r}: port {port} is not a TCP port")
    return match["host"].strip("[]"), port


def refuse_ray_client(address: str) -> None:
    """``ray://`` (Ray Client): one line saying what to use instead (the module docstring says why)."""
    if address.lower().startswith("ray://"):
        raise NbdistUsageError(
            f"--cluster {address}: Ray Client (ray://) cannot stream the images (ray-project/ray#43357); run the "
            "notebook on a node of the cluster with --cluster auto, give the head's GCS address HOST:6379 from "
            "a machine that reaches every node, or run the CLI there: ray job submit -- nbdist generate --cluster auto"
        )


def check_cluster_options(options: Any) -> None:
    """The address's form, and no option that only means something for one machine's own processes."""
    host_port(options.cluster)
    for field, flag in _ONE_MACHINE.items():
        if getattr(options, field) is not None:
            raise NbdistUsageError(f"{flag} places a model within one machine; it does not go with --cluster")
