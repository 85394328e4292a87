"""The one shape the warm pool drives: a group of workers that start, take runs, answer, cancel and stop.

Two groups implement it: the forked workers of one machine (``parent/fork/workers.py``,
``notebook_launcher``) and the Ray actors of a cluster (``parent/ray/actors.py``, ``--cluster``). The
pool, the run, the collector, the gallery and the results only ever see this protocol and the plain
messages of ``nbdist/messages.py``, so a run looks the same wherever its images are made.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

from ...messages import Message, RunCommand, WorkerStarted
from .exits import WorkerExit

if TYPE_CHECKING:
    from ..planning.plan import Plan

__all__ = ["WorkerBackend", "start_backend"]


class WorkerBackend(Protocol):
    """A group of warm workers, started once and replaced whole when the ``PoolKey`` changes.

    Every worker says ``WorkerStarted`` once it is ready (``hello``); then each run is ``run`` (the
    group hands the jobs out its own way) and answered per worker with ``RunStarted`` ... images ...
    ``RunFinished``, read one message at a time with ``receive``.
    """

    ready: dict[int, WorkerStarted]  # the workers that said hello and are still there, by rank
    shares_disk: bool  # the workers see the kernel's filesystem: they write a run's PNGs themselves

    @property
    def ranks(self) -> set[int]:
        """The workers a run handed over now will be answered by."""
        ...

    @property
    def log_dir(self) -> str:
        """A local folder where worker ``r`` may have left ``worker-r.log``."""
        ...

    def start(self) -> None:
        """Start the workers; returns at once (each says ``WorkerStarted`` when it is ready)."""

    def hello(self, msg: WorkerStarted) -> None:
        """A worker is ready."""

    @property
    def all_ready(self) -> bool:
        """Every worker has said hello."""
        ...

    @property
    def alive(self) -> bool:
        """The group can still answer (it was not stopped and not every worker is gone)."""
        ...

    def healthy(self) -> bool:
        """A run may be handed to this group now."""
        ...

    def waiting(self) -> str | None:
        """What the workers wait for before they can even start (a busy cluster), in a few words; else None."""
        ...

    @property
    def pids(self) -> list[int]:
        """The workers' process ids, by rank."""
        ...

    def run(self, command: RunCommand) -> None:
        """Hand a run's jobs to the workers (between runs only)."""

    def receive(self, timeout: float) -> Message | None:
        """The next message from the workers, or None after ``timeout`` s (or once the group is gone)."""
        ...

    def cancel(self, run: int) -> None:
        """Cancel run ``run`` (and any before it): workers see it after their current denoising step."""

    def deaths(self) -> list[WorkerExit]:
        """Workers that died (once ``alive`` is False)."""
        ...

    def launcher_error(self) -> BaseException | None:
        """A failure of the group itself rather than of one worker."""
        ...

    def stop(self, grace: float = 5.0) -> list[int]:
        """Ask every worker to exit, killing those that do not; returns pids that survived."""
        ...

    def kill(self) -> list[int]:
        """End every worker now; returns pids that survived."""
        ...

    def close(self) -> None:
        """Release what the group holds (after its workers are gone)."""


def start_backend(plan: Plan) -> WorkerBackend:
    """The group ``plan`` needs, started: Ray actors for ``--cluster`` (only then is ``ray`` imported), else forks."""
    group: WorkerBackend
    if plan.options.cluster is not None:
        from ..ray.actors import RayActorGroup

        group = RayActorGroup(plan)
    else:
        from ..fork.workers import WorkerGroup
        from ..ray.cluster import leave

        leave()  # a kernel that used --cluster before: no fork while Ray's threads run here

        group = WorkerGroup(
            plan.pipe,
            plan.name,
            plan.device_type,
            plan.dtype,
            plan.num_processes,
            plan.threads,
            plan.options,
            cuda_visible=plan.cuda_visible,
        )
    try:
        group.start()
    except BaseException:  # half started: give back what it holds (forks, store, placement group) first
        with contextlib.suppress(Exception):
            group.kill()
        with contextlib.suppress(Exception):
            group.close()
        raise
    return group
