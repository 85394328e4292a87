"""A hub model's first download shows its bytes as a phase (issue 31, item 6), tried offline.

``hub_standin`` serves the demo model's folder as a hub repository over local HTTP, so the download goes
through the real huggingface_hub client and diffusers' ``download``, in a fresh process (``HF_ENDPOINT``
is read when huggingface_hub is imported) with an empty cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hub_standin import serve

from nbdist.demo import demo_model
from nbdist.downloads import size_text

LOAD = """
import nbdist
from nbdist import phases
from nbdist.pipelines import load_pipeline
seen = []
with phases.reporting(seen.append):
    pipe = load_pipeline('nbdist/standin', 'float32')
print(repr([text for text in seen if text.startswith('downloading')]), type(pipe).__name__)
"""


def test_a_hub_download_reports_its_bytes_as_a_phase(tmp_path: Path) -> None:
    """Before: the phases went from "importing" to "loading the pipeline" with nothing for the download."""
    with serve("nbdist/standin", demo_model()) as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        done = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports, name = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    reports = eval(reports)  # a list of plain strings, printed by the child
    assert name == "StableDiffusionPipeline" and reports[0] == "downloading the model…", done.stdout
    last = re.fullmatch(r"downloading the model: ([\d.]+) of ([\d.]+) MB", reports[-1])
    assert last is not None and last.group(1) == last.group(2), reports  # the last byte is reported
    totals = {re.search(r" of ([\d.]+) MB", text).group(1) for text in reports[1:]}  # type: ignore[union-attr]
    assert totals == {last.group(2)}, reports  # the whole size from the first report, not as files start
    weights = sum(p.stat().st_size for p in demo_model().rglob("*.safetensors"))
    assert float(last.group(2)) * 1e6 >= weights * 0.95, (reports, weights)


def test_sizes_read_as_the_hub_shows_them() -> None:
    assert size_text(1.2e9, 6.94e9) == "1.2 of 6.9 GB"
    assert size_text(0.5e6, 3.6e6) == "0.5 of 3.6 MB"
