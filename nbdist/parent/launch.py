"""Start the workers with ``accelerate.notebook_launcher`` (fork), quietly, on a fresh port.

Why not the defaults: accelerate's fixed port 29500 collides with a previous failed run ("address
already in use") and with a second kernel; its banner ("Launching training on 2 CUDAs.") is printed
even on a CPU run; and with ``num_processes=1`` it runs the function inside the kernel itself, which
would put the pipeline on the GPU in the kernel process and make interrupts unsafe. For one process
nbdist therefore calls the same torch elastic launch that ``notebook_launcher`` uses for many.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["free_port", "launch_workers"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; the window for a race is tiny)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def quiet_launch() -> Iterator[None]:
    """Swallow the launcher's banner and torch elastic's info/warning logs (errors still show)."""
    names = ("torch.distributed.elastic", "torch.distributed.launcher")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _launch_one(function: Callable[..., Any], args: tuple[Any, ...], port: int) -> None:
    """One forked worker through torch elastic, as ``notebook_launcher`` does for several."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=1,
        run_id="nbdist",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_backend="static",
        rdzv_configs={"rank": 0},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="fork",
    )
    elastic_launch(config=config, entrypoint=function)(*args)


def launch_workers(function: Callable[..., Any], args: tuple[Any, ...], num_processes: int) -> None:
    """Run ``function(*args)`` in ``num_processes`` forked workers; blocks until they have all exited."""
    port = free_port()
    with quiet_launch():
        if num_processes == 1:
            _launch_one(function, args, port)
            return
        from accelerate import notebook_launcher

        notebook_launcher(function, args=args, num_processes=num_processes, use_port=str(port), master_addr="127.0.0.1")
