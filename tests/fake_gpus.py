"""Stand-in GPUs on a machine with none: an ``nvidia-smi`` on ``PATH`` and an NVML library for torch.

The real code (``nbdist/parent/machine/gpus.py``) runs the real command and parses its real output format;
only the answers are made up. ``fake_gpus(tmp_path, [{"memory_gb": 24}, ...])`` writes the script and
returns the folder to put first on ``PATH`` (in this process with monkeypatch, or in a kernel's env).

``fake_nvml(folder, count)`` builds (gcc) a ``libnvidia-ml.so.1`` answering ``count`` devices: the CUDA build
of torch asks NVML through ctypes for ``device_count()`` and, with ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, for
``is_available()``; put its folder on ``LD_LIBRARY_PATH`` and torch sees GPUs without a driver, as on a GPU
machine, up to the first real CUDA call.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

_SCRIPT = r"""#!{python}
import json, sys
spec = json.load(open({spec_path!r}))
args = sys.argv[1:]
if spec.get("fail"):
    print(spec["fail"], file=sys.stderr); sys.exit(9)
if args == ["-L"]:
    for i, g in enumerate(spec["gpus"]):
        print(f"GPU {{i}}: {{g.get('name', 'Fake GPU')}} (UUID: GPU-fake-{{i}})")
        for j, profile in enumerate(g.get("mig", [])):
            print(f"  MIG {{profile:<13}} Device {{j:>2}}: (UUID: MIG-fake-{{i}}-{{j}})")
    sys.exit(0)
query = next((a for a in args if a.startswith("--query-")), "")
if query.startswith("--query-compute-apps"):
    for pid in spec.get("compute_apps", []):
        print(pid)
    sys.exit(0)
if query.startswith("--query-gpu="):
    fields = query.split("=", 1)[1].split(",")
    old = spec.get("old_driver", False)
    for f in fields:
        if old and f in ("compute_cap", "display_active"):
            print(f'Field "{{f}}" is not a valid field to query.', file=sys.stderr); sys.exit(2)
    for i, g in enumerate(spec["gpus"]):
        total = int(g.get("memory_gb", 24) * 1024)
        values = {{
            "index": str(i), "uuid": f"GPU-fake-{{i}}", "name": g.get("name", "Fake GPU"),
            "memory.total": str(total), "memory.free": str(int(g.get("free_gb", g.get("memory_gb", 24)) * 1024)),
            "compute_cap": str(g.get("compute_cap", 8.9)),
            "display_active": "Enabled" if g.get("display") else "Disabled",
            "count": str(len(spec["gpus"])),  # accelerate's notebook_launcher asks for count,name
            "driver_version": spec.get("driver_version", "570.86.15"),  # accelerate's P2P check
            "compute_capability": str(g.get("compute_cap", 8.9)),  # accelerate's fp8 check
        }}
        print(", ".join(values[f] for f in fields))
    sys.exit(0)
print("unsupported fake nvidia-smi call: " + " ".join(args), file=sys.stderr)
sys.exit(1)
"""


def fake_gpus(folder: Path, gpus: list[dict[str, Any]], **extra: Any) -> Path:
    """Write ``folder/bin/nvidia-smi`` answering for ``gpus``; returns ``folder/bin`` (put it first on PATH).

    Each GPU: ``memory_gb`` (total), ``free_gb``, ``compute_cap``, ``name``, ``display``. Extra keys:
    ``compute_apps`` (pids holding a CUDA context), ``old_driver`` (no compute_cap field), ``fail``.
    """
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "fake-gpus.json"
    spec_path.write_text(json.dumps({"gpus": gpus, **extra}))
    script = bin_dir / "nvidia-smi"
    script.write_text(_SCRIPT.format(python=sys.executable, spec_path=str(spec_path)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


_NVML_C = r"""
/* A stand-in NVML: what torch's CUDA build asks through ctypes (count, handles, UUIDs). */
#include <stdio.h>
#define COUNT {count}
typedef struct {{ int index; }} device_t;
static device_t devices[COUNT > 0 ? COUNT : 1];
int nvmlInit_v2(void) {{ return 0; }}
int nvmlInit(void) {{ return 0; }}
int nvmlShutdown(void) {{ return 0; }}
int nvmlDeviceGetCount_v2(unsigned int *n) {{ *n = COUNT; return 0; }}
int nvmlDeviceGetCount(unsigned int *n) {{ *n = COUNT; return 0; }}
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, device_t **h) {{
    if (i >= COUNT) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    devices[i].index = (int)i; *h = &devices[i]; return 0;
}}
int nvmlDeviceGetHandleByIndex(unsigned int i, device_t **h) {{ return nvmlDeviceGetHandleByIndex_v2(i, h); }}
int nvmlDeviceGetUUID(device_t *h, char *buf, unsigned int len) {{
    snprintf(buf, len, "GPU-fake-%d", h->index); return 0;
}}
"""


def fake_nvml(folder: Path, count: int) -> Path:
    """Build ``folder/lib/libnvidia-ml.so.1`` answering ``count`` GPUs (UUIDs as ``fake_gpus``'); returns the folder.

    Put it first on ``LD_LIBRARY_PATH`` of the process that imports torch (a kernel's env): ctypes loads
    NVML by that name through the dynamic loader.
    """
    import subprocess

    lib_dir = folder / "lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    source = lib_dir / "fake_nvml.c"
    source.write_text(_NVML_C.format(count=count))
    library = lib_dir / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(library), str(source)], check=True)
    return lib_dir


def library_path_with(lib_dir: Path) -> str:
    """``LD_LIBRARY_PATH`` with the stand-in NVML first."""
    rest = os.environ.get("LD_LIBRARY_PATH", "")
    return f"{lib_dir}{os.pathsep}{rest}" if rest else str(lib_dir)


def path_with(bin_dir: Path) -> str:
    """``PATH`` with the fake first."""
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
