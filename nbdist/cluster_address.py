"""``--cluster ADDRESS``: which Ray cluster a run goes to, checked before anything connects.

Only text is handled here (no ``ray`` import): the address forms Ray accepts, ``NBDIST_CLUSTER`` as the
default, and the options that mean one machine's processes and so cannot go with a cluster.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import NbdistUsageError

__all__ = ["ENV", "check_cluster_options", "cluster_from_env", "host_port"]

ENV = "NBDIST_CLUSTER"
_LOCAL = ("", "local", "none")  # NBDIST_CLUSTER=local (or --cluster local) keeps a run on this machine
_ADDRESS = re.compile(r"^(ray://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_ONE_MACHINE = {"device_map": "--device-map", "offload": "--offload", "max_memory": "--max-memory"}


def cluster_from_env(given: str | None) -> str | None:
    """The cluster a run uses: ``--cluster``, else ``NBDIST_CLUSTER``; ``local`` (or empty) means this machine."""
    value = given if given is not None else os.environ.get(ENV)
    if value is None or value.strip().lower() in _LOCAL:
        return None
    return value.strip()


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto``."""
    if address == "auto":
        return None
    match = _ADDRESS.match(address)
    if match is None:
        raise NbdistUsageError(f"--cluster {address!r}: write auto, HOST:PORT or ray://HOST:PORT")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise NbdistUsageError(f"--cluster {address!r}: port {port} is not a TCP port")
    return match["host"].strip("[]"), port


def check_cluster_options(options: Any) -> None:
    """The address's form, and no option that only means something for one machine's own processes."""
    host_port(options.cluster)
    for field, flag in _ONE_MACHINE.items():
        if getattr(options, field) is not None:
            raise NbdistUsageError(f"{flag} places a model within one machine; it does not go with --cluster")
