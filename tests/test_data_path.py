"""Images on disk, a bounded kernel and ``open_run``, through a real kernel with real forked workers.

By default every image is a PNG in ``nbdist-runs/<date>-<time>-<words>/`` next to the notebook (the
kernel's working folder), written by the workers; records point at the files and load images on
demand. ``--no-save`` keeps the old in-memory path. A kernel SIGKILLed mid-run leaves every image it
had received complete on disk and in the manifest.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import pytest
from kernel import Kernel
from PIL import Image
from test_faults import wait_gone, workers_of

PROMPTS = "a red circle\na blue square\na green triangle\na black circle"
DEFAULT_PLACE = "import os; os.environ.pop('NBDIST_SAVE_DIR', None)"  # conftest's temp folder out: the real default


def _run_folders(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "nbdist-runs").iterdir() if p.is_dir()) if (cwd / "nbdist-runs").is_dir() else []


def test_images_on_disk_by_default_and_no_save_as_before(kernel: Kernel, tiny_model: str, tmp_path: Path) -> None:
    assert kernel.execute(DEFAULT_PLACE).error is None
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 -o res\n{PROMPTS}")
    assert ex.error is None, ex.error
    [folder] = _run_folders(tmp_path)
    assert folder.name.endswith("-a-red-circle") and folder.name[:4].isdigit(), folder.name
    pngs = sorted(folder.glob("*.png"))
    assert [p.name[:5] for p in pngs] == ["00000", "00001", "00002", "00003"]
    assert {"manifest.jsonl", "index.html"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.part"))
    assert kernel.value("str(res.save_dir)") == str(folder)
    assert kernel.value("[str(r.path) for r in res]") == [str(p) for p in pngs]
    # The records hold no image: each loads from its file, equal to it, with the parameters in its text chunk.
    assert kernel.value("[r.__dict__['_held'] is None for r in res]") == [True] * 4
    assert kernel.value("all(r.image.tobytes() == __import__('PIL.Image').Image.open(r.path).tobytes() for r in res)")
    meta = json.loads(Image.open(pngs[2]).text["nbdist"])
    assert (meta["prompt"], meta["seed"], meta["index"]) == ("a green triangle", 2, 2)
    manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["file"] for e in manifest) == [p.name for p in pngs]
    # --no-save: nothing written, the same pixels held in memory.
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 --no-save -o mem\n{PROMPTS}")
    assert ex.error is None, ex.error
    assert _run_folders(tmp_path) == [folder]
    assert kernel.value("[(r.path, r.__dict__['_held'] is not None) for r in mem]") == [(None, True)] * 4
    assert kernel.value("[a.image.tobytes() == b.image.tobytes() for a, b in zip(res, mem)]") == [True] * 4
    # open_run: the same records and a static gallery, from the folder alone.
    assert kernel.execute(f"import nbdist; back = nbdist.open_run({str(folder)!r})").error is None
    same = "[(a.index, a.prompt, a.seed, a.rank, str(a.path)) == (b.index, b.prompt, b.seed, b.rank, str(b.path))"
    assert kernel.value(same + " for a, b in zip(res, back)]") == [True] * 4
    assert kernel.value("[a.image.tobytes() == b.image.tobytes() for a, b in zip(res, back)]") == [True] * 4
    assert kernel.value("back._repr_html_().count('data:image/jpeg')") == 4
    # Contradicting flags: one line before anything starts.
    ex = kernel.execute(f"%%distgen --model {tiny_model} --no-save --save-dir x -o bad\na")
    assert "--no-save and --save-dir" in ex.stream("stderr"), ex.stream()


def test_unwritable_runs_folder_falls_back_to_the_cache(kernel: Kernel, tiny_model: str, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cache = tmp_path / "cache"
    env = {"NBDIST_SAVE_DIR": str(locked / "runs"), "NBDIST_CACHE": str(cache)}
    setup = f"import os; os.environ.update({env!r})"
    assert kernel.execute(setup).error is None
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 1 --steps 1 --seed 0 -o res\na red circle")
    assert ex.error is None, ex.error
    if os.geteuid() != 0:  # root writes anywhere: no fallback to see
        notes = [line for line in ex.stream("stderr").splitlines() if "cannot be written" in line]
        assert len(notes) == 1 and str(cache / "runs") in notes[0], ex.stream("stderr")
        assert kernel.value("str(res[0].path).startswith(" + repr(str(cache / "runs")) + ")")
    assert kernel.value("res[0].path.is_file() and res.complete")


def test_kernel_killed_mid_run_keeps_every_image_it_showed(tiny_model: str, tmp_path: Path) -> None:
    prompts = "\n".join(f"shape {i}" for i in range(200))
    with Kernel(cwd=str(tmp_path)) as kernel:
        assert kernel.execute("%load_ext nbdist").error is None
        folder = tmp_path / "run"
        ex = kernel.execute(
            f"%%distgen --model {tiny_model} -n 2 --steps 1 --seed 0 --save-dir {folder} --background -o h\n{prompts}"
        )
        assert ex.error is None, ex.error
        deadline = time.monotonic() + 120
        while (seen := kernel.value("len(h)")) < 10:  # records: images the kernel received (and showed)
            assert time.monotonic() < deadline, "no images arrived"
        workers = [p.pid for p in workers_of(kernel.pid)]
        os.kill(kernel.pid, signal.SIGKILL)
        wait_gone(workers, 30)  # the workers die with the kernel (PR_SET_PDEATHSIG)
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line complete
    assert len(entries) >= seen
    for entry in entries:
        with Image.open(folder / entry["file"]) as image:
            image.load()  # complete: a truncated PNG raises here
            assert json.loads(image.text["nbdist"])["index"] == entry["index"]
    from nbdist import open_run

    assert len(open_run(folder)) == len(entries)


@pytest.fixture(scope="module")
def wide_model() -> str:
    """A tiny pipeline that makes 512x512 images (``nbdist.tiny``'s "wide"): the data path is most of its cost."""
    from nbdist.tiny import ensure_tiny_pipeline

    return str(ensure_tiny_pipeline("wide"))


def test_long_run_keeps_the_kernel_small(kernel: Kernel, wide_model: str) -> None:
    """Kernel RSS over a saved run of 120 images of 512x512 (90 MB of pixels) grows by a fraction of that."""
    count = 120
    prompts = "\n".join(f"p{i}" for i in range(count))
    run = "%%distgen --model {m} -n 2 --steps 1 --guidance 1 --seed {s} -o {o}\n{p}"
    assert kernel.execute(run.format(m=wide_model, s=0, o="warm", p="a\nb")).error is None
    rss = "int(open('/proc/self/statm').read().split()[1]) * 4096"
    before = kernel.value(rss)
    ex = kernel.execute(run.format(m=wide_model, s=1, o="big", p=prompts), timeout=400)
    assert ex.error is None, ex.error
    grown = kernel.value(rss) - before
    pixels = count * 512 * 512 * 3
    assert grown < pixels / 4, (grown, pixels)
    assert kernel.value("(sum(r.ok for r in big), big[-1].image.size)") == (count, (512, 512))


def test_static_copy_caps_what_it_inlines_and_links_the_rest(tmp_path: Path) -> None:
    """5,000 records: the copy inlines at most INLINE_CAP thumbnails and INLINE_BYTES, then links index.html."""
    from nbdist.jobs import make_jobs
    from nbdist.options import GenerateOptions
    from nbdist.parent.output.static_html import INLINE_BYTES, INLINE_CAP, result_html
    from nbdist.parent.results.result import GenerationResult, ImageRecord

    jobs = make_jobs([f"p{i}" for i in range(5000)], 1, 0)
    thumb = b"\xff" * 20_000  # 20 KB each: the byte cap binds first (150 of them)
    records = [ImageRecord(j.index, j.prompt, j.index, j.seed, path=tmp_path / f"{j.index}.png") for j in jobs]
    for record in records:
        record.thumbnail = thumb
    result = GenerationResult(records, [], GenerateOptions(seed=0), 0, "m", 2, 1.0, save_dir=tmp_path, jobs=jobs)
    page = result_html(result)
    inlined = page.count("data:image/jpeg")
    assert inlined == min(INLINE_CAP, INLINE_BYTES // len(thumb)) and len(page) < 6_000_000
    assert f"{5000 - inlined} more images" in page and str(tmp_path / "index.html") in page
    for record in records:
        record.thumbnail = b"\xff" * 500  # small ones: the count cap
    assert result_html(result).count("data:image/jpeg") == INLINE_CAP


def test_run_folder_names() -> None:
    from nbdist.parent.runs.folders import run_folder_name

    name = run_folder_name(["  An Astronaut, riding a horse on the moon at night"], when=0)
    assert name.endswith("-an-astronaut-riding-a-horse") and len(name.split("-")) == 4 + 5, name


def test_outbox_forms_and_the_kernel_writer(tmp_path: Path) -> None:
    """The three forms an image takes (``SaveTarget``): a file the worker wrote, PNG bytes the kernel
    writes (workers on other machines), raw pixels (``--no-save``); each saved file carries the text chunk."""
    import queue

    from nbdist.jobs import make_jobs
    from nbdist.messages import SaveTarget
    from nbdist.options import GenerateOptions
    from nbdist.parent.output.saving import DiskWriter
    from nbdist.parent.results.observer import RunInfo
    from nbdist.worker.outbox import Outbox

    jobs = make_jobs(["a red circle"], 1, 7)
    image = Image.new("RGB", (64, 32), (200, 10, 10))
    params = {"model": "m", "steps": 1}
    sent: queue.Queue = queue.Queue()
    outbox = Outbox(sent, 16, SaveTarget(str(tmp_path / "worker"), params))
    (tmp_path / "worker").mkdir()
    outbox.send_image(jobs[0], 0, "cpu", 0.5, image)
    outbox.use(SaveTarget(None, params))
    outbox.send_image(jobs[0], 1, "cpu", 0.5, image)
    outbox.use(None)
    outbox.send_image(jobs[0], 2, "cpu", 0.5, image)
    outbox.close()
    wrote, encoded, pixels = (sent.get_nowait() for _ in range(3))
    assert (wrote.path, wrote.png, wrote.pixels) == (str(tmp_path / "worker" / "00000-a-red-circle.png"), None, None)
    assert encoded.png is not None and encoded.path is None and pixels.pixels == image.tobytes()
    assert all(max(Image.open(io.BytesIO(m.thumbnail)).size) <= 16 for m in (wrote, encoded, pixels))
    writer = DiskWriter(tmp_path / "kernel")
    writer.on_start(RunInfo(jobs, GenerateOptions(seed=7), "m", 7, 1, "cpu", 32, 64))
    writer.on_message(encoded)  # written at once, as it came
    for path in (Path(wrote.path), tmp_path / "kernel" / "00000-a-red-circle.png"):
        with Image.open(path) as saved:
            assert saved.tobytes() == image.tobytes() and json.loads(saved.text["nbdist"])["seed"] == 7
    [line] = (tmp_path / "kernel" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(line)["file"] == "00000-a-red-circle.png" and json.loads(line)["rank"] == 1
