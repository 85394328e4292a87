"""``nbdist generate``: plain, under torchrun, under accelerate launch, and as two torchrun "nodes".

Every run is a real subprocess with the real launcher and the real (tiny) diffusers pipeline on CPU
(gloo). Each checks the folder it leaves: every expected PNG exactly once, nothing else, parameters in
the PNG text chunk, a manifest line per image, an index.html linking each PNG once, and pixels equal
(within 2/255) to a plain diffusers call with seed ``seed + i``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbdist.jobs import make_jobs
from nbdist.launched import LaunchEnv, _check, launched
from nbdist.messages import ImageFailed, ImageReady, StepProgress, WorkerStarted
from nbdist.options import GenerateOptions, NbdistUsageError
from nbdist.parent.fork.launch import free_port
from nbdist.parent.output.saving import file_name
from nbdist.parent.output.terminal import TerminalProgress
from nbdist.parent.results.observer import RunInfo

PROMPTS = ["a dog", "a cat", "an astronaut riding a horse"]
STEPS = 2
BIN = Path(sys.executable).parent
TIMEOUT = 300
_REFERENCES: dict[tuple[str, int], Image.Image] = {}


def reference(pipe, prompt: str, seed: int) -> Image.Image:
    """A plain diffusers call for one image (cached: several runs check the same images)."""
    key = (prompt, seed)
    if key not in _REFERENCES:
        _REFERENCES[key] = pipe(
            prompt, num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed)
        ).images[0]
    return _REFERENCES[key]


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\na dog\n\na cat\n  an astronaut riding a horse  \n", encoding="utf-8")
    return path


def generate_args(model: str, prompts: Path, out: Path, seed: int, *extra: str) -> list[str]:
    return [
        "-m",
        "nbdist",
        "generate",
        "--model",
        model,
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--seed",
        str(seed),
        *extra,
    ]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def check_folder(out: Path, pipe, seed: int, k: int = 1) -> list[dict]:
    """The folder holds exactly this run's images, each once and right; returns the manifest entries."""
    jobs = make_jobs(PROMPTS, k, seed)
    names = [file_name(job) for job in jobs]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "index.html", "manifest.jsonl"])

    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(e["index"] for e in entries) == [job.index for job in jobs]  # each image exactly once
    for entry in entries:
        job = jobs[entry["index"]]
        assert (entry["prompt"], entry["seed"], entry["file"]) == (job.prompt, job.seed, file_name(job))

    for job, name in zip(jobs, names, strict=True):
        image = Image.open(out / name)
        image.load()
        assert image.text["prompt"] == job.prompt and image.text["seed"] == str(job.seed)
        assert image.text["steps"] == str(STEPS)
        assert json.loads(image.text["nbdist"])["index"] == job.index
        assert max_diff(image.convert("RGB"), reference(pipe, job.prompt, job.seed)) <= 2, name

    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    linked = re.findall(r'<a href="([^"]+)"><img src="', page)
    assert linked == names  # every image once, in prompt order
    assert f"{len(jobs)} of {len(jobs)} images" in page
    return entries


def test_plain_cli_forks_its_own_workers(tiny_model, tiny_pipe, prompts_file, tmp_path) -> None:
    out = tmp_path / "out"
    proc = run([sys.executable, *generate_args(tiny_model, prompts_file, out, 10, "-n", "2")], tmp_path)
    entries = check_folder(out, tiny_pipe, 10)
    assert {e["rank"] for e in entries} == {0, 1}
    assert "3 of 3 images" in proc.stderr and "seed 10" in proc.stderr
    assert "[3/3]" in proc.stderr  # progress lines (stderr is not a tty here)
    assert "\r" not in proc.stderr
    # each image's thumbnail inline, so the page shows them where the PNGs cannot be fetched (issue 30 item 5a)
    assert (out / "index.html").read_text(encoding="utf-8").count('<img src="data:image/jpeg;base64,') == 3


def test_cli_under_torchrun_uses_the_given_processes(tiny_model, tiny_pipe, prompts_file, tmp_path) -> None:
    out = tmp_path / "out"
    cmd = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        *generate_args(tiny_model, prompts_file, out, 20),
    ]
    proc = run(cmd, tmp_path)
    entries = check_folder(out, tiny_pipe, 20)
    assert {e["rank"] for e in entries} == {0, 1}  # the launcher's two processes split the work
    assert "on 2 process(es) (torchrun)" in proc.stderr
    assert proc.stderr.count("3 of 3 images") == 1  # rank 0 reports the whole run, once


def test_cli_under_accelerate_launch(tiny_model, tiny_pipe, prompts_file, tmp_path) -> None:
    out = tmp_path / "out"
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",  # on a CPU-only machine: torchrun-style CPU processes with gloo
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *generate_args(tiny_model, prompts_file, out, 30),
    ]
    proc = run(cmd, tmp_path)
    entries = check_folder(out, tiny_pipe, 30)
    assert {e["rank"] for e in entries} == {0, 1}
    assert "on 2 process(es) (accelerate launch)" in proc.stderr


def test_two_nodes_without_a_shared_folder(tiny_model, tiny_pipe, prompts_file, tmp_path) -> None:
    """Two torchrun agents on loopback, each writing to its own folder as separate machines would.

    Each node keeps the PNGs of its share; the node where rank 0 ran receives the others' PNGs and
    writes the manifest and the index covering every image once both nodes are done.
    """
    port = free_port()
    procs = []
    for name in ("node-a", "node-b"):
        cmd = [
            str(BIN / "torchrun"),
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=nbdist-test",
            *generate_args(tiny_model, prompts_file, tmp_path / name, 40),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two "machines" sharing this one's cores
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
        finally:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(outputs)

    folders = [tmp_path / "node-a", tmp_path / "node-b"]
    main = [f for f in folders if (f / "index.html").exists()]
    assert len(main) == 1, "exactly one node (rank 0's) writes the index"
    entries = check_folder(main[0], tiny_pipe, 40)
    assert {e["rank"] for e in entries} == {0, 1}
    other = next(f for f in folders if f is not main[0])
    own = sorted(p.name for p in other.iterdir())
    assert own == sorted(e["file"] for e in entries if e["rank"] == 1), "the other node keeps its own share only"
    assert sum("3 of 3 images" in text for text in outputs) == 1


def test_cli_usage_errors_are_one_line(tiny_model, prompts_file, tmp_path, monkeypatch, capsys) -> None:
    """In-process: ``main`` parses and checks everything before anything is loaded or started."""
    from nbdist.cli import main

    monkeypatch.chdir(tmp_path)

    def fails(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert "Traceback" not in err, err
        assert not (tmp_path / "out").exists()
        return err

    base = ["--model", tiny_model, "--out", str(tmp_path / "out")]
    assert "--prompts nope.txt: No such file or directory" in fails(*base, "--prompts", "nope.txt")
    assert "no prompts" in fails(*base, "--prompts", os.devnull)
    assert "--steps must be a positive integer" in fails(*base, "-p", "a dog", "--steps", "0")
    assert "error: -n must be a positive integer" in fails(*base, "-p", "a dog", "-n", "0")  # the flag as typed
    assert "'0:5GB' has no '='" in fails(*base, "-p", "a", "--device-map", "balanced", "--max-memory", "0:5GB")
    assert "the following arguments are required: -o/--out/--save-dir" in fails("--model", tiny_model, "-p", "a")


def test_cli_one_run_per_folder_and_model_demo(tmp_path: Path) -> None:
    """--model demo is the shipped model (no hub; ./demo only when written so); a folder holding a run is
    refused in one line naming --overwrite, which replaces that run and keeps the user's other files."""
    (tmp_path / "demo").mkdir()  # an (empty) folder named demo here: bare "demo" must not mean it
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # any hub lookup would fail

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "nbdist", "generate", "--model", "demo", "-n", "1", "--steps", "2", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)

    first = cli("-p", "a red circle on a blue background", "-p", "a blue square on a red background", "--out", "out")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = cli("-p", "a green triangle on a white background", "--out", "out")
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        "nbdist generate: error: --out 'out' already holds a run (2 PNG(s), index.html and manifest.jsonl): "
        "add --overwrite to replace it, or choose another folder"
    ], again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched
    replaced = cli("-p", "a green triangle on a white background", "-o", "out", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "00000-a-green-triangle-on-a-white-background.png",
        "index.html",
        "manifest.jsonl",
        "notes.txt",
    ]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1
    local = cli("-p", "a red circle", "--out", "elsewhere", "--model", "./demo")  # the folder, by its path
    assert local.returncode == 2 and "'./demo'" in local.stderr, local.stderr


def test_cli_under_torchrun_refuses_a_folder_holding_a_run(prompts_file, tmp_path) -> None:
    """Rank 0 decides for every rank, before any of them writes: one line, nothing written, all ranks exit."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"index": 0}\n')
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", *generate_args("demo", prompts_file, out, 0)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if "already holds a run" in line]
    assert refusals == [f"nbdist generate: error: --out {str(out)!r} already holds a run (manifest.jsonl): "
                        "add --overwrite to replace it, or choose another folder"], proc.stderr  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"]


def test_cli_under_torchrun_refuses_cluster(prompts_file, tmp_path) -> None:
    """--cluster starts Ray actors from one driver; under torchrun there are already processes: one line."""
    out = tmp_path / "out"
    args = generate_args("demo", prompts_file, out, 0, "--cluster", "auto")
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=1", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    refusals = [line for line in proc.stderr.splitlines() if "--cluster" in line]
    assert proc.returncode != 0 and len(refusals) == 1, proc.stderr
    assert refusals[0].startswith("nbdist generate: error: --cluster auto: torchrun already started"), refusals
    assert "without torchrun" in refusals[0] and not out.exists()


def test_launch_detection() -> None:
    assert launched({}) is None
    assert launched({"WORLD_SIZE": "2"}) is None  # no launcher variables: a plain run
    env = launched(
        {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    )
    assert env == LaunchEnv(rank=3, world_size=4, local_rank=1, local_world_size=2, launcher="torchrun")
    acc = launched({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "no"})
    assert acc is not None and acc.launcher == "accelerate launch"


def test_launched_checks_before_the_process_group(tiny_model) -> None:
    env = LaunchEnv(rank=0, world_size=2, local_rank=0, local_world_size=2, launcher="torchrun")
    ok = GenerateOptions(steps=2, seed=0)
    assert _check(tiny_model, PROMPTS, ok, env) == ("cpu", "float32")
    with pytest.raises(NbdistUsageError, match="--schedule dynamic needs workers forked by nbdist"):
        _check(tiny_model, PROMPTS, ok.with_(schedule="dynamic"), env)
    with pytest.raises(NbdistUsageError, match="-n 3: torchrun started 2 process"):
        _check(tiny_model, PROMPTS, ok.with_(num_processes=3), env)
    with pytest.raises(NbdistUsageError, match="not a multiple of 2"):
        _check(tiny_model, PROMPTS, ok.with_(height=61), env)
    with pytest.raises(NbdistUsageError, match="does not exist"):
        _check("./no-such-model", PROMPTS, ok, env)


def _info() -> RunInfo:
    jobs = make_jobs(["a dog", "a cat"], 1, 0)
    return RunInfo(jobs, GenerateOptions(), "m", 0, 2, "cpu", 64, 64)


def _ready(index: int, rank: int) -> ImageReady:
    return ImageReady(index, rank, "cpu", 0.5, "RGB", (1, 1), b"\0\0\0", b"")


def test_terminal_progress_plain_lines() -> None:
    stream = io.StringIO()
    progress = TerminalProgress(stream, prefix="[rank 1] ")
    progress.on_start(_info())
    progress.on_message(WorkerStarted(1, "cpu", 1, 2, 1))
    progress.on_message(StepProgress(1, (0,), 1, 2))
    progress.on_message(_ready(0, 1))
    progress.on_message(ImageFailed(1, 1, "cpu", "ValueError: boom", ""))
    progress.on_end(None)
    assert stream.getvalue().splitlines() == [
        "[rank 1] worker 1 ready on cpu, 2 image(s)",
        "[rank 1] [1/2] 00000-a-dog.png (rank 1, 0.50 s)",
        "[rank 1] [2/2] image 1 FAILED: ValueError: boom",
    ]


def test_terminal_progress_live_line() -> None:
    stream = io.StringIO()
    progress = TerminalProgress(stream, live=True, interval=0)
    progress.on_start(_info())
    progress.on_message(StepProgress(0, (0,), 1, 2))
    progress.on_message(_ready(0, 0))
    progress.on_message(_ready(1, 1))
    progress.on_end(None)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, redrawn
    assert "step 1/2" in text
    assert text.rstrip("\n").rsplit("\r", 1)[-1].startswith("\x1b[K[" + "#" * 24 + "] 2/2 images")


def test_terminal_rate_counts_from_the_first_step() -> None:
    """A batch's images arrive together: the rate is images over denoising time, not over their gap."""
    now = [0.0]
    stream = io.StringIO()
    progress = TerminalProgress(stream, live=True, interval=0, clock=lambda: now[0])
    progress.on_start(_info())
    now[0] = 5.0  # loading the pipeline: not counted
    progress.on_message(StepProgress(0, (0, 1), 1, 2))
    now[0] = 6.0
    progress.on_message(_ready(0, 0))
    now[0] = 6.001
    progress.on_message(_ready(1, 0))
    last = stream.getvalue().rsplit("\r", 1)[-1]
    assert "2.00 img/s" in last, last


PLANNED = ("prompt", "seed", "negative", "steps", "guidance", "scheduler", "height", "width", "sources")


def test_the_same_job_through_every_launcher_is_planned_alike(tmp_path) -> None:
    """A tiny Flux-shaped model (its defaults differ from the fallbacks: 28 steps, guidance 3.5, 128 px), two
    prompts, two steps, seed 0, through ``nbdist.generate``, the plain CLI and the CLI under torchrun: the
    manifests agree on every planned field. Under torchrun the manifest said ``"guidance": null``,
    ``"scheduler": null`` and no sources (issue 28): ``launched.py`` now takes the plan's call settings."""
    import nbdist
    from nbdist.tiny_families import ensure_family

    model = str(ensure_family("flux"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\na cat\n")
    folders = {name: tmp_path / name for name in ("generate", "cli", "torchrun")}
    nbdist.generate(model, ["a dog", "a cat"], steps=2, seed=0, num_processes=1, save_dir=str(folders["generate"]))
    run([sys.executable, *generate_args(model, prompts, folders["cli"], 0)], tmp_path)
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2"]
    run([*torchrun, *generate_args(model, prompts, folders["torchrun"], 0)], tmp_path)

    def planned(folder: Path) -> list[dict]:
        lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        return sorted(({k: line.get(k) for k in PLANNED} for line in lines), key=lambda e: e["seed"])

    made = {name: planned(folder) for name, folder in folders.items()}
    assert made["generate"][0]["guidance"] == 3.5 and made["generate"][0]["sources"], made["generate"][0]
    assert made["cli"] == made["generate"]
    assert made["torchrun"] == made["generate"]
