"""What the GPUs are, asked of ``nvidia-smi``: never of ``torch.cuda``, which would start CUDA in the kernel.

One query gives every fact the plan needs before anything starts: how many GPUs this process may use
(``CUDA_VISIBLE_DEVICES`` honoured, by index or UUID, as CUDA reads it), their memory (total and free
now), compute capability (for the dtype rule) and whether a display is attached (a GPU driving a
screen is not a worker by default). ``nvidia-smi`` too old to know a field is asked again without it,
and the problem is kept so a message can say why a fact is missing.

Tests put a stand-in ``nvidia-smi`` first on ``PATH`` (``tests/fake_gpus.py``): the real parsing and
the real arithmetic run against GPU sizes the test chooses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = ["Gpu", "GpuQuery", "compute_apps", "query_gpus"]

_FIELDS = ("index", "uuid", "name", "memory.total", "memory.free", "compute_cap", "display_active")
_MIB = 2**20


@dataclass(frozen=True)
class Gpu:
    """One GPU as this process sees it (``index`` is its CUDA index after ``CUDA_VISIBLE_DEVICES``)."""

    index: int
    physical: int  # nvidia-smi's own index
    uuid: str
    name: str
    memory_total: int  # bytes
    memory_free: int  # bytes, now
    compute_cap: float | None  # None: nvidia-smi too old to say
    display_active: bool = False


@dataclass(frozen=True)
class GpuQuery:
    """The visible GPUs, and why the list may be incomplete (no nvidia-smi, an old one, an error)."""

    gpus: list[Gpu] = field(default_factory=list)
    problem: str | None = None

    @property
    def compute_gpus(self) -> list[Gpu]:
        """The GPUs that should be workers: all, except those driving a display when others do not."""
        headless = [g for g in self.gpus if not g.display_active]
        return headless if headless else list(self.gpus)


def _run_smi(smi: str, args: list[str]) -> tuple[str, str | None]:
    """Output of ``nvidia-smi ARGS``, or "" and what went wrong."""
    try:
        done = subprocess.run([smi, *args], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return "", f"nvidia-smi could not run ({exc})"
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        return "", f"nvidia-smi failed ({said[0] if said else f'status {done.returncode}'})"
    return done.stdout, None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def _parse(line: str, fields: tuple[str, ...]) -> Gpu | None:
    values = dict(zip(fields, (part.strip() for part in line.split(",")), strict=False))
    if len(values) != len(fields) or not values["index"].isdigit():
        return None
    total, free = _number(values["memory.total"]), _number(values["memory.free"])
    return Gpu(
        index=int(values["index"]),
        physical=int(values["index"]),
        uuid=values["uuid"],
        name=values["name"],
        memory_total=int((total or 0) * _MIB),
        memory_free=int((free if free is not None else total or 0) * _MIB),
        compute_cap=_number(values["compute_cap"]) if "compute_cap" in values else None,
        display_active=values.get("display_active", "").lower() == "enabled",
    )


_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+\d+:\s+\(UUID:\s+(MIG-[^)\s]+)\)")


def _mig_instances(smi: str, gpus: list[Gpu]) -> list[Gpu]:
    """MIG instances from ``nvidia-smi -L``, each a GPU of its own: its profile's memory, its parent's capability.

    ``--query-gpu`` lists only the physical GPUs, while ``CUDA_VISIBLE_DEVICES`` names instances by their
    ``MIG-`` UUID; an instance's memory is in its profile name (``3g.40gb``: 40 GB).
    """
    out, problem = _run_smi(smi, ["-L"])
    found: list[Gpu] = []
    parent: Gpu | None = None
    for line in out.splitlines() if problem is None else []:
        if line.startswith("GPU "):
            index = line[4:].split(":", 1)[0]
            parent = next((g for g in gpus if str(g.physical) == index), None)
        elif (match := _MIG_LINE.match(line)) and parent is not None:
            profile, uuid = match.groups()
            size = re.search(r"(\d+)gb", profile)
            memory = int(size.group(1)) * 10**9 if size else parent.memory_total
            name = f"{parent.name} MIG {profile}"
            found.append(Gpu(-1, parent.physical, uuid, name, memory, memory, parent.compute_cap, False))
    return found


def _matches(gpu: Gpu, entry: str) -> bool:
    """Whether a ``CUDA_VISIBLE_DEVICES`` entry (an index, a ``GPU-``/``MIG-`` UUID or a UUID prefix) names ``gpu``."""
    if entry.isdigit():
        return gpu.physical == int(entry) and not gpu.uuid.startswith("MIG-")
    return bool(entry) and gpu.uuid.startswith(entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}")


def _visible(gpus: list[Gpu], visible: str | None) -> list[Gpu]:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` leaves, in its order, renumbered from 0; CUDA stops at a bad entry."""
    if visible is None:
        return gpus
    chosen: list[Gpu] = []
    for entry in visible.split(","):
        entry = entry.strip()
        match = [g for g in gpus if _matches(g, entry)]
        if len(match) != 1 or match[0] in chosen:
            break
        chosen.append(match[0])
    return [
        Gpu(i, g.physical, g.uuid, g.name, g.memory_total, g.memory_free, g.compute_cap, g.display_active)
        for i, g in enumerate(chosen)
    ]


def query_gpus() -> GpuQuery:
    """Every GPU this process may use, with memory, capability and display state (see the module doc)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if os.path.isdir("/proc/driver/nvidia/gpus"):
            return GpuQuery([], "the NVIDIA driver is loaded but nvidia-smi is not on PATH")
        return GpuQuery([], "no NVIDIA driver (nvidia-smi not found)")
    fields, note = _FIELDS, None
    out, problem = _run_smi(smi, [f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if problem is not None and "not a valid field" in problem.lower():
        fields = tuple(f for f in _FIELDS if f not in ("compute_cap", "display_active"))
        out, problem = _run_smi(smi, [f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
        note = "nvidia-smi is too old to report compute capability (update the NVIDIA driver)"
    if problem is not None:
        return GpuQuery([], problem)
    parsed = [g for g in (_parse(line, fields) for line in out.splitlines() if line.strip()) if g is not None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and "MIG-" in visible:
        parsed += _mig_instances(smi, parsed)
    return GpuQuery(_visible(parsed, visible), note)


def compute_apps() -> set[int] | None:
    """Pids that hold a CUDA context on any GPU now (nvidia-smi's compute apps); None if it cannot say."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out, problem = _run_smi(smi, ["--query-compute-apps=pid", "--format=csv,noheader,nounits"])
    if problem is not None:
        return None
    return {int(line.strip()) for line in out.splitlines() if line.strip().isdigit()}
