"""The warm workers of a Ray cluster: one actor per GPU (or CPU slot), spread over the nodes.

The same ``WorkerBackend`` as the forked group (``parent/pool/backend.py``); what differs is inside:

- a placement group reserves one bundle per actor, ``SPREAD`` over the nodes, and each actor loads
  and places the pipeline itself (``worker/actor.py``); its hello carries its Ray node id;
- jobs are handed out here, not split up front: each actor has at most ``IN_FLIGHT`` batches queued
  (the next is already there when one ends, hiding the network's latency), the rest wait in the
  kernel in dispatch order (costliest first) and go to whichever actor frees up first;
- every batch is a Ray streaming generator; ``receive`` waits on all of them at once and returns the
  messages as the actors yield them, so images reach the gallery as each is decoded;
- a cancel is a call in the actors' ``control`` group, read after every denoising step;
- an actor whose node is lost (or that dies) costs only what it had not finished: those jobs go back
  to the front of the queue for the others, its ``RunFinished`` names the node, and later runs use
  the actors that remain. With none left, the jobs not made are the run's ``missing``.

Per run, every actor answers ``RunStarted`` at once and ``RunFinished`` only when the whole run's work
is done, since a lost actor's jobs may still come back to it.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import NbdistUsageError
from ...jobs import ImageJob
from ...messages import (
    ImageFailed,
    ImageReady,
    Message,
    RunCommand,
    RunFinished,
    RunStarted,
    WorkerFinished,
    WorkerStarted,
)
from ...spec import WorkerSetup
from ...worker.actor import CONTROL, WORK, GenerationActor
from ..pool.exits import WorkerExit
from .cluster import first_line, free, hold

if TYPE_CHECKING:
    from ..planning.plan import Plan

__all__ = ["IN_FLIGHT", "RayActorGroup"]

IN_FLIGHT = 2  # batches handed to one actor at a time: one being made, one waiting on its node


@dataclass
class _Call:
    """One batch handed to one actor, and which of its images have come back."""

    rank: int
    jobs: list[ImageJob]
    stream: Any  # ray.ObjectRefGenerator
    done: set[int] = field(default_factory=set)

    def unfinished(self) -> list[ImageJob]:
        return [job for job in self.jobs if job.index not in self.done]


class RayActorGroup:
    """``plan.num_processes`` actors on the cluster ``plan.options.cluster`` is connected to."""

    shares_disk = False  # other machines: the actors send PNG bytes and the kernel writes them

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self.ready: dict[int, WorkerStarted] = {}
        self._actors: dict[int, Any] = {}
        self._hellos: list[tuple[Any, int]] = []  # (ObjectRef of ``ready()``, rank) not answered yet
        self._calls: dict[int, list[_Call]] = {}
        self._streams: dict[int, _Call] = {}  # id(stream) -> its call
        self._pending: collections.deque[list[ImageJob]] = collections.deque()
        self._inbox: collections.deque[Message] = collections.deque()
        self._command: RunCommand | None = None
        self._settings: Any = None  # ObjectRef of (options, call): put once per run, not once per batch
        self._cancelled = False
        self._dispatched = False
        self._closed = False
        self._placement: Any = None
        self._unit = "GPU" if plan.device_type == "cuda" else "CPU"
        self._placed: Any = None  # ObjectRef of the placement group's ready(), until it is
        self._asked_at = 0.0
        self._waiting: str | None = None  # "waiting for 3 CPUs on the cluster, 1 free" while it is pending
        self._free_seen_at = 0.0
        self._held = 0
        self._log_dir = tempfile.mkdtemp(prefix="nbdist-ray-logs-")  # stays empty: the logs are on the nodes

    # -- starting --------------------------------------------------------------------------------

    def start(self) -> None:
        """Reserve the bundles and start the actors; each answers its ``ready`` call when its pipeline is placed."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        plan = self._plan
        gpu = plan.device_type == "cuda"
        bundle = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
        self._placement = placement_group([bundle] * plan.num_processes, strategy="SPREAD")
        self._placed, self._asked_at = self._placement.ready(), time.monotonic()
        self._held = plan.num_processes
        hold(self._unit, self._held)
        setup = WorkerSetup(plan.device_type, plan.dtype, plan.threads, "", None, plan.options, model=plan.name)
        pipeline = _put_pipeline(plan.pipe) if plan.pipe is not None else None  # once, to every node that needs it
        actor_class = ray.remote(concurrency_groups={WORK: 1, CONTROL: 1})(GenerationActor)
        for rank in range(plan.num_processes):
            actor = actor_class.options(
                num_cpus=1,
                num_gpus=1 if gpu else 0,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._placement, placement_group_bundle_index=rank
                ),
            ).remote(setup, rank, pipeline)
            self._actors[rank] = actor
            self._calls[rank] = []
            self._hellos.append((actor.ready.remote(), rank))

    def hello(self, msg: WorkerStarted) -> None:
        self.ready[msg.rank] = msg

    # -- what the pool asks ------------------------------------------------------------------------

    @property
    def ranks(self) -> set[int]:
        return set(self._actors)

    @property
    def log_dir(self) -> str:
        return self._log_dir

    @property
    def all_ready(self) -> bool:
        return bool(self._actors) and all(rank in self.ready for rank in self._actors)

    @property
    def alive(self) -> bool:
        """Not stopped, and some actor is left (or its last words are still to be read)."""
        return not self._closed and (bool(self._actors) or bool(self._inbox))

    def healthy(self) -> bool:
        return not self._closed and bool(self._actors)

    @property
    def pids(self) -> list[int]:
        return [self.ready[r].pid for r in sorted(self.ready)]

    def deaths(self) -> list[WorkerExit]:
        return []  # a lost actor is said in its RunFinished, where the run's records see it

    def launcher_error(self) -> BaseException | None:
        return None

    # -- a run -------------------------------------------------------------------------------------

    def run(self, command: RunCommand) -> None:
        """Take the run; its batches go out once every actor is ready (its ``RunStarted`` follows its hello)."""
        self._command, self._cancelled, self._dispatched = command, False, False
        if not self._hellos:
            self._dispatch()

    def _dispatch(self) -> None:
        """Queue the run's batches in dispatch order and give every actor its first ``IN_FLIGHT``."""
        import ray

        command = self._command
        assert command is not None
        self._dispatched = True
        size = command.options.batch_size
        jobs = [] if self._cancelled else list(command.jobs)
        self._settings = ray.put((command.options, command.call, _init_files(command.call), command.save))
        self._pending = collections.deque(jobs[i : i + size] for i in range(0, len(jobs), size))
        self._inbox.extend(RunStarted(rank, command.run, -1) for rank in sorted(self._actors))
        self._fill_all()
        self._settle()

    def cancel(self, run: int) -> None:
        """Drop the batches not handed out yet; the actors end theirs within one denoising step."""
        if self._command is None or run < self._command.run:
            return
        self._cancelled = True
        self._pending.clear()
        for actor in self._actors.values():
            with contextlib.suppress(Exception):
                actor.cancel.options(concurrency_group=CONTROL).remote(run)

    def receive(self, timeout: float) -> Message | None:
        """The next message: one already waiting here, else the first any actor yields within ``timeout`` s."""
        import ray

        if self._inbox:
            return self._inbox.popleft()
        if self._placed is not None:
            self._wait_for_placement(timeout)
            return None
        waiting = [ref for ref, _ in self._hellos] or [call.stream for call in self._streams.values()]
        if not waiting:  # nothing out there (every actor lost): the caller's poll must not spin
            time.sleep(timeout)
            return None
        done, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
        if not done:
            return None
        if isinstance(done[0], ray.ObjectRef):
            return self._on_hello(done[0])
        message = self._on_stream(self._streams[id(done[0])])
        return message if message is not None else (self._inbox.popleft() if self._inbox else None)

    def waiting(self) -> str | None:
        return self._waiting

    def _wait_for_placement(self, timeout: float) -> None:
        """Other jobs hold the slots the actors need: say how many are free (checked once a second), and refuse
        after ``--cluster-wait`` s rather than wait on a cluster that may stay busy for hours."""
        import ray

        done, _ = ray.wait([self._placed], timeout=timeout)
        if done:
            self._placed = self._waiting = None
            return
        now = time.monotonic()
        if self._waiting is not None and now - self._free_seen_at < 1.0:
            return
        self._free_seen_at = now
        n, unit, free_now = self._plan.num_processes, self._unit, free(self._unit)
        self._waiting = f"waiting for {n} {unit}s on the cluster, {free_now} free"
        waited, bound = now - self._asked_at, self._plan.options.cluster_wait
        if waited > bound:
            raise NbdistUsageError(
                f"--cluster {self._plan.options.cluster}: {n} {unit}(s) asked, {free_now} free after {bound:g} s "
                f"(other jobs hold the rest); ask for at most {free_now} with -n, or wait longer with --cluster-wait"
            )

    def _on_hello(self, ref: Any) -> Message:
        import ray

        rank = next(r for x, r in self._hellos if x == ref)
        self._hellos = [(x, r) for x, r in self._hellos if r != rank]
        try:
            hello: WorkerStarted = ray.get(ref)
        except Exception as exc:  # it could not get ready: the pool ends the group, as for a forked worker
            return WorkerFinished(rank, error=first_line(exc), traceback=str(exc))
        if not self._hellos and self._command is not None and not self._dispatched:
            self._dispatch()
        return hello

    def _on_stream(self, call: _Call) -> Message | None:
        """The next message of a batch; its end hands the actor more; an error means the actor is gone."""
        import ray

        try:
            message: Message = ray.get(next(call.stream))
        except StopIteration:
            self._end_call(call)
            return None
        except Exception as exc:
            self._lose(call.rank, exc)
            return None
        if isinstance(message, ImageReady | ImageFailed):
            call.done.add(message.index)
        return message

    def _end_call(self, call: _Call) -> None:
        self._streams.pop(id(call.stream), None)
        self._calls[call.rank].remove(call)
        self._fill(call.rank)
        self._settle()

    def _fill_all(self) -> None:
        """Round robin, so the first (costliest) batches go to different actors."""
        for _ in range(IN_FLIGHT):
            for rank in sorted(self._actors):
                self._fill(rank, limit=1)

    def _fill(self, rank: int, limit: int = IN_FLIGHT) -> None:
        assert self._command is not None
        calls = self._calls[rank]
        while self._pending and len(calls) < IN_FLIGHT and limit > 0:
            jobs = self._pending.popleft()
            make = self._actors[rank].make.options(num_returns="streaming", concurrency_group=WORK)
            call = _Call(rank, jobs, make.remote(self._command.run, jobs, self._settings))
            calls.append(call)
            self._streams[id(call.stream)] = call
            limit -= 1

    def _settle(self) -> None:
        """Once no batch is out (and none can be handed out), every actor left says it is done with the run."""
        if self._command is None or not self._dispatched or self._streams or (self._pending and self._actors):
            return
        run, cancelled = self._command.run, self._cancelled
        self._inbox.extend(RunFinished(rank, run, cancelled=cancelled) for rank in sorted(self._actors))
        self._command = None

    def _lose(self, rank: int, exc: BaseException) -> None:
        """An actor is gone (its node was lost, or it died): its unfinished jobs go to the others."""
        calls = self._calls.pop(rank, [])
        for call in calls:
            self._streams.pop(id(call.stream), None)
        for rest in [call.unfinished() for call in reversed(calls)]:
            if rest:
                self._pending.appendleft(rest)
        actor = self._actors.pop(rank, None)
        hello = self.ready.pop(rank, None)
        with contextlib.suppress(Exception):
            import ray

            ray.kill(actor)
        unfinished = sum(len(call.unfinished()) for call in calls)
        where = "the other workers" if self._actors else "no worker: none is left"
        error = f"{_what_was_lost(rank, hello, exc)}: {unfinished} unfinished image(s) go to {where}"
        if self._command is not None:
            self._inbox.append(RunFinished(rank, self._command.run, error=error, traceback=first_line(exc)))
        if not self._cancelled:
            for other in sorted(self._actors):
                self._fill(other)
        self._settle()

    # -- stopping ------------------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> list[int]:
        """Actors hold nothing to flush: stopping is ending them and giving their bundles back."""
        self.kill()
        self.close()
        return []

    def kill(self) -> list[int]:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self._actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if self._placement is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self._placement)
        self._actors.clear()
        self._streams.clear()
        self._closed = True
        hold(self._unit, -self._held)  # the placement group is gone: its slots are no longer this kernel's
        self._held = 0
        return []

    def close(self) -> None:
        if not self._closed:
            self.kill()
        shutil.rmtree(self._log_dir, ignore_errors=True)


def _what_was_lost(rank: int, hello: WorkerStarted | None, exc: BaseException) -> str:
    """``node 9f3a61c2 lost (worker 2)`` when its node is gone, else the actor's own death (e.g. out of memory)."""
    import ray

    node = hello.node if hello is not None and hello.node else ""
    try:
        alive = any(n.get("NodeID") == node and n.get("Alive") for n in ray.nodes())
    except Exception:  # the cluster itself is unreachable: say what is known
        alive = False
    if node and alive:
        return f"worker {rank} died on node {node[:8]} ({first_line(exc)})"
    return f"node {node[:8] or '?'} lost (worker {rank})"


def _put_pipeline(pipe: Any) -> Any:
    """``ray.put`` of a pipeline object; one that cannot be pickled (it holds a lock, a file, a CUDA stream) is
    said by what Ray could not pickle, not by Ray's first line (which starts the pipeline's whole repr)."""
    import ray

    try:
        return ray.put(pipe)
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        why = f"{type(cause).__name__}: {first_line(cause)}"
        raise TypeError(
            f"{type(pipe).__name__} cannot be sent to the cluster's nodes ({why}); give the model id or folder instead"
        ) from exc


def _init_files(call: Any) -> dict[str, bytes]:
    """``--init`` PNGs the plan wrote on this machine, by path: the actors' nodes cannot read the kernel's disk."""
    init = getattr(call, "init", None)
    paths = [] if init is None else [init] if isinstance(init, str) else list(init)
    return {path: Path(path).read_bytes() for path in dict.fromkeys(paths)}
