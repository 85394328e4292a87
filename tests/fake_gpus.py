"""A stand-in ``nvidia-smi`` on ``PATH``: GPUs of the sizes a test chooses, on a machine with none.

The real code (``nbdist/parent/machine/gpus.py``) runs the real command and parses its real output format;
only the answers are made up. ``fake_gpus(tmp_path, [{"memory_gb": 24}, ...])`` writes the script and
returns the folder to put first on ``PATH`` (in this process with monkeypatch, or in a kernel's env).
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


def path_with(bin_dir: Path) -> str:
    """``PATH`` with the fake first."""
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
