"""The gallery fed real worker messages: widget traits, coalescing, the static copy, and a real kernel.

Most tests need no kernel: ipywidgets works without one (its comm is a no-op), and the messages are
the same dataclasses the workers send. The last tests run ``%%distgen`` in a real kernel and look at
what a front-end receives.
"""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from nbdist.jobs import make_jobs
from nbdist.messages import ImageFailed, ImageReady, StepPreview, StepProgress, WorkerFinished, WorkerStarted
from nbdist.notebook.gallery import WIDGET_VIEW_MIMETYPE, Gallery
from nbdist.notebook.gallery_state import format_seconds
from nbdist.options import GenerateOptions
from nbdist.parent.output.static_html import StaticTile, fallback_class, live_class, render_gallery, static_class
from nbdist.parent.results.observer import RunInfo
from nbdist.parent.results.result import GenerationResult, ImageRecord
from nbdist.worker.outbox import thumbnail_jpeg

PROMPTS = ["a dog", "a cat <b>bold</b>", "a very long prompt " * 8]


class Clock:
    """A clock the test moves by hand, so rates, ETA and flush timing are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(steps: int = 4, k: int = 2, workers: int = 2) -> RunInfo:
    opts = GenerateOptions(steps=steps, seed=10, images_per_prompt=k)
    return RunInfo(make_jobs(PROMPTS, k, 10), opts, "tiny-model", 10, workers, "cpu", 64, 96)


def _ready(index: int, rank: int, color: tuple[int, int, int] = (200, 30, 30)) -> ImageReady:
    img = Image.new("RGB", (96, 64), color)
    return ImageReady(index, rank, "cpu", 0.5, "RGB", img.size, img.tobytes(), thumbnail_jpeg(img, 256))


def _gallery(clock: Clock, run: RunInfo | None = None) -> Gallery:
    gallery = Gallery(interval=0.2, clock=clock)
    gallery.on_start(run or _run())
    return gallery


def _result(gallery: Gallery, run: RunInfo, records: list[ImageRecord]) -> GenerationResult:
    done = {r.index for r in records}
    return GenerationResult(
        records=records,
        missing=[j for j in run.jobs if j.index not in done],
        options=run.options,
        seed=run.seed,
        model=run.model,
        num_processes=run.num_processes,
        seconds=3.0,
    )


def test_no_widget_before_on_start() -> None:
    gallery = Gallery()
    assert gallery.widget is None and gallery.tiles == {}


def test_tiles_start_queued_in_prompt_order(capsys: pytest.CaptureFixture[str]) -> None:
    run = _run()
    gallery = _gallery(Clock(), run)
    assert gallery.widget is not None
    assert [t.index for t in gallery.widget.tiles] == list(range(6))
    assert [t.prompt for t in gallery.widget.tiles] == [p for p in PROMPTS for _ in range(2)]
    assert [t.seed for t in gallery.widget.tiles] == list(range(10, 16))
    assert {t.status for t in gallery.widget.tiles} == {"queued"}
    assert {t.label for t in gallery.widget.tiles} == {"queued"}
    assert gallery.widget.aspect == pytest.approx(96 / 64)
    header = gallery.widget.header
    assert header["title"].startswith("6 images · 2 worker(s) on cpu · 4 steps · seed 10")
    assert header["workers"] == ["worker 0 · loading the pipeline…", "worker 1 · loading the pipeline…"]
    assert "0/6 images" in header["stats"] and "steps 0/24" in header["stats"]
    bundle = gallery.mimebundle()
    assert bundle[WIDGET_VIEW_MIMETYPE]["model_id"] == gallery.widget.model_id
    assert "text/html" not in bundle  # the static copy is the result's Out[], not part of this output
    assert "nbdist-live" in gallery.widget._dom_classes


def test_steps_images_and_errors_reach_the_tiles() -> None:
    clock = Clock()
    gallery = _gallery(clock)
    widget = gallery.widget
    assert widget is not None
    gallery.on_message(WorkerStarted(0, "cpu", 111, 3, 1))
    gallery.on_message(WorkerStarted(1, "cpu", 112, 3, 1))
    gallery.on_message(StepProgress(0, (0,), 2, 4))
    gallery.on_message(StepProgress(1, (3, 4), 1, 4))
    clock.now += 0.1
    gallery.on_tick()  # within the interval: nothing sent yet
    assert widget.tiles[0].status == "queued"
    clock.now += 0.15
    gallery.on_tick()
    assert widget.tiles[0].label == "step 2/4 · worker 0"
    assert widget.tiles[0].fraction == pytest.approx(0.5)
    assert widget.tiles[3].label == widget.tiles[4].label == "step 1/4 · worker 1"
    assert widget.header["workers"][0] == "worker 0 · cpu · 0/3 images · “a dog” · step 2/4"
    assert widget.header["workers"][1].endswith("(+1) · step 1/4")
    assert "steps 4/24" in widget.header["stats"]

    gallery.on_message(_ready(0, 0))
    gallery.on_message(ImageFailed(3, 1, "cpu", "RuntimeError: out of memory", "Traceback ..."))
    clock.now += 1.0
    gallery.on_tick()
    tile = widget.tiles[0]
    assert tile.status == "done" and tile.label == ""
    assert tile.meta == "#0 · seed 10 · worker 0 · cpu · 0.5 s"
    assert Image.open(io.BytesIO(tile.thumbnail)).size == (96, 64)
    failed = widget.tiles[3]
    assert failed.status == "failed"
    assert failed.label == "failed: RuntimeError: out of memory"
    assert failed.error == "RuntimeError: out of memory"
    stats = widget.header["stats"]
    assert "1/6 images" in stats and "1 failed" in stats and "steps 9/24" in stats
    assert "elapsed 1.2 s" in stats or "elapsed 1.3 s" in stats
    assert re.search(r"\d+\.\d\d img/s", stats)
    assert widget.header["workers"][0] == "worker 0 · cpu · 1/3 images · waiting"


def test_a_cluster_workers_line_names_its_node() -> None:
    """A --cluster actor's header line says which Ray node it is on, before its device."""
    clock = Clock()
    gallery = _gallery(clock)
    gallery.on_message(WorkerStarted(0, "cuda:0", 111, -1, 1, node="9f3a61c2d4e5b6a7"))
    gallery.on_message(WorkerStarted(1, "cpu", 112, 3, 1))
    clock.now += 1.0
    gallery.on_tick()
    assert gallery.widget is not None
    assert gallery.widget.header["workers"][0] == "worker 0 · node 9f3a61c2 · cuda:0 · 0 images · waiting"
    assert gallery.widget.header["workers"][1] == "worker 1 · cpu · 0/3 images · waiting"


def test_updates_are_coalesced_per_tick() -> None:
    """Fifty step reports for one tile between two ticks cost one tile update, not fifty."""
    clock = Clock()
    gallery = _gallery(clock)
    tile = gallery.tiles[0]
    sent: list[str] = []
    tile.observe(lambda change: sent.append(change["new"]), names="label")
    for step in range(1, 51):
        gallery.on_message(StepProgress(0, (0,), step, 50))
        gallery.on_tick()  # the clock does not move: the collector calls this after every message
    assert sent == []
    clock.now += 0.25
    gallery.on_tick()
    assert sent == ["step 50/50 · worker 0"]
    clock.now += 0.25
    gallery.on_tick()  # nothing changed: nothing sent
    assert sent == ["step 50/50 · worker 0"]


def test_eta_counts_from_the_first_progress() -> None:
    clock = Clock()
    gallery = _gallery(clock, _run(steps=10, k=1, workers=1))
    clock.now += 5.0  # loading the pipeline: not part of the denoising rate
    gallery.on_message(WorkerStarted(0, "cpu", 1, 3, 2))
    clock.now += 2.0
    gallery.on_message(StepProgress(0, (0,), 10, 10))
    gallery.on_message(_ready(0, 0))
    clock.now += 0.5
    gallery.flush()
    # 10 of 30 steps in 2.5 s since the worker was ready: 20 steps left at 4 steps/s = 5 s.
    assert "ETA 5.0 s" in gallery.widget.header["stats"]
    assert format_seconds(125) == "2 min 05 s"
    assert format_seconds(3720) == "1 h 02 min"


def test_end_pairs_the_widget_with_the_static_copy() -> None:
    clock = Clock()
    run = _run(k=1)
    gallery = _gallery(clock, run)
    gallery.on_message(StepProgress(1, (2,), 1, 4))  # still running when the run is interrupted
    messages = [_ready(0, 0), ImageFailed(1, 0, "cpu", "ValueError: <bad> & worse", "tb")]
    for msg in messages:
        gallery.on_message(msg)
    gallery.on_message(WorkerFinished(0))
    ready = messages[0]
    assert isinstance(ready, ImageReady)
    records = [
        ImageRecord(0, PROMPTS[0], 0, 10, image=ready.to_pil(), rank=0, device="cpu", seconds=0.5),
        ImageRecord(1, PROMPTS[1], 1, 11, rank=0, device="cpu", error="ValueError: <bad> & worse"),
    ]
    records[0].thumbnail = ready.thumbnail
    result = _result(gallery, run, records)
    result.interrupted = True
    gallery.on_end(result)

    widget = gallery.widget
    assert widget is not None
    assert widget.header["finished"] is True
    assert widget.header["stats"] == result.summary()
    # interrupted: neither stuck at "step 1/4" nor "queued" for work that will not come
    assert widget.tiles[2].status == "stopped" and widget.tiles[2].label == "not generated (stopped)"
    assert f"nbdist-live-{gallery.token}" in widget._dom_classes
    assert result.display_token == gallery.token

    page = result._repr_html_()
    assert f'class="nbdist-static {static_class(gallery.token)}"' in page
    assert page.count("<img ") == 1 and "data:image/jpeg;base64," in page
    assert "ValueError: &lt;bad&gt; &amp; worse" in page  # errors shown, escaped
    assert "a cat &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert "not generated (stopped)" in page  # the interrupted image has a tile saying so
    assert "#0 · seed 10 · worker 0 (cpu) · 0.5 s" in page
    # The pairing rule hides the copy only next to this run's live gallery.
    assert f".jp-OutputArea-child:has(.nbdist-live-{gallery.token})~" in page


def test_full_image_on_request() -> None:
    clock = Clock()
    run = _run(k=1)
    gallery = _gallery(clock, run)
    widget = gallery.widget
    assert widget is not None
    sent: list[tuple[dict, list]] = []
    widget.send = lambda content, buffers=None: sent.append((content, buffers or []))  # type: ignore[method-assign]
    widget._on_custom(widget, {"type": "full", "index": 0}, [])
    assert sent[-1][0] == {"type": "full", "index": 0, "ok": False, "error": "the run is still going"}

    ready = _ready(0, 0, (10, 200, 10))
    records = [ImageRecord(0, PROMPTS[0], 0, 10, image=ready.to_pil(), rank=0, device="cpu", seconds=0.5)]
    gallery.on_end(_result(gallery, run, records))
    widget._on_custom(widget, {"type": "full", "index": 0}, [])
    content, buffers = sent[-1]
    assert content == {
        "type": "full",
        "index": 0,
        "ok": True,
        "name": "nbdist-0000-seed10.png",
        "width": 96,
        "height": 64,
    }
    png = Image.open(io.BytesIO(buffers[0]))
    assert png.format == "PNG" and png.size == (96, 64) and png.getpixel((5, 5)) == (10, 200, 10)
    widget._on_custom(widget, {"type": "full", "index": 2}, [])
    assert sent[-1][0]["ok"] is False and sent[-1][0]["error"] == "this image was not generated"
    widget._on_custom(widget, {"type": "something else"}, [])
    assert len(sent) == 3


def test_text_progress_follows_the_header_and_hides_next_to_the_live_gallery() -> None:
    clock = Clock()
    gallery = Gallery(interval=0.2, clock=clock, fallback=False)  # no kernel here: build the bundles only
    run = _run()
    gallery.on_start(run)
    bundle = gallery.fallback_bundle()
    assert bundle["text/plain"].splitlines() == [
        gallery.widget.header["title"],
        gallery.widget.header["stats"],
        *gallery.widget.header["workers"],
    ]
    page = bundle["text/html"]
    token = gallery.token
    assert fallback_class(token) in page
    # Hidden where this run's live gallery is drawn, or once its static copy follows; the widget's
    # placeholder ("Loading widget...", "model not found") is hidden while the text stands in for it,
    # and after the run (the final, empty update keeps the rules).
    assert f":has(.{live_class(token)})~.jp-OutputArea-child:has(.{fallback_class(token)}){{display:none}}" in page
    assert f":has(~.jp-OutputArea-child .{static_class(token)}){{display:none}}" in page
    gallery.on_message(WorkerStarted(0, "cpu", 111, 3, 1))
    gallery.on_message(_ready(0, 0))
    clock.now += 1.0
    assert "1/6 images" in gallery.fallback_bundle()["text/plain"]
    final = gallery.fallback_bundle(final=True)
    assert final["text/plain"] == "" and " hidden " in final["text/html"] and "images" not in final["text/html"]
    assert f":has(+.jp-OutputArea-child .{fallback_class(token)}):not(:has(.{live_class(token)}))" in final["text/html"]


def test_every_image_the_project_writes_has_its_prompt_as_alt_text(tmp_path) -> None:
    """Static copy and index.html: no ``<img>`` without alt text (nbconvert warns, screen readers say nothing)."""
    from nbdist.parent.output.index_page import write_index

    run = _run(k=1)
    clock = Clock()
    gallery = _gallery(clock, run)
    records = [
        ImageRecord(j.index, j.prompt, j.index, j.seed, image=Image.new("RGB", (96, 64)), rank=0, thumbnail=b"\xff")
        for j in run.jobs
    ]
    result = _result(gallery, run, records)
    entries = [{"index": j.index, "file": f"{j.index:05d}.png"} for j in run.jobs[:2]]
    index = write_index(tmp_path, run.jobs, entries).read_text(encoding="utf-8")
    for page, count in ((gallery.static_html(result), 3), (index, 2)):
        imgs = re.findall(r"<img\b[^>]*>", page)
        assert len(imgs) == count
        alts = [re.search(r'\balt="([^"]*)"', img) for img in imgs]
        assert all(alt and alt.group(1) for alt in alts), imgs
        assert alts[0].group(1).startswith("a dog")


def test_render_gallery_keeps_its_signature_and_degrades_without_style() -> None:
    page = render_gallery([StaticTile("a.png", "cap", "title", href="a.png", detail="seed 1")], "heading")
    assert page.startswith('<div class="nbdist-static">')
    assert '<a href="a.png"><img src="a.png"' in page
    without_style = re.sub(r"<style>.*?</style>", "", page)
    assert 'style="display:inline-block' in without_style  # still a grid where <style> is stripped
    assert "nbdist-live" not in page  # no pairing rules outside a notebook run


def test_magic_output_is_the_gallery_and_nothing_else(kernel, tiny_model) -> None:
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 -o res\na dog\na cat\na cow\n")
    assert ex.error is None, ex.error
    assert ex.stream() == ""  # no banner, no warnings, no progress bars
    displays = ex.of_type("display_data")
    assert len(displays) == 2  # the live widget, then its text progress (for a view that cannot draw it)
    assert WIDGET_VIEW_MIMETYPE in displays[0].content["data"]
    progress = displays[1].content
    display_id = progress["transient"]["display_id"]
    # Shown at once, with what the kernel is doing (the first run imports torch and loads the model);
    # then the run's own lines.
    assert "importing torch and diffusers" in progress["data"]["text/plain"]
    updates = [m.content for m in ex.of_type("update_display_data")]
    assert updates and {u["transient"]["display_id"] for u in updates} == {display_id}
    assert any("3 images" in u["data"]["text/plain"] for u in updates)
    assert updates[-1]["data"]["text/plain"] == ""  # emptied at the end: the static copy says it all
    results = ex.of_type("execute_result")
    assert len(results) == 1
    page = results[0].content["data"]["text/html"]
    assert page.count("<img ") == 3
    token = kernel.value("res.display_token")
    assert static_class(token) in page
    assert fallback_class(token) in progress["data"]["text/html"]
    # The first image reached the browser before the cell ended, as one tile update with its JPEG.
    updates = ex.image_updates()
    assert updates and updates[0].at < results[0].at
    paths = updates[0].content["data"]["buffer_paths"]  # with it, maybe the tile's live preview, emptied
    assert updates[0].buffers[paths.index(["thumbnail"])][:2] == b"\xff\xd8"


def test_bad_magic_opens_no_comm(kernel) -> None:
    ex = kernel.execute("%%distgen --steps 2\na dog\n")  # no model: a UsageError before anything starts
    assert "UsageError" in ex.stream("stderr")  # IPython prints usage errors instead of a traceback
    assert ex.of_type("comm_open") == []


def test_queued_run_says_so_until_its_workers_take_it() -> None:
    clock = Clock()
    gallery = _gallery(clock)
    gallery.on_queued(2)
    assert gallery.widget.header["stats"] == "queued: waiting for 2 run(s) before it on the warm workers"
    gallery.on_message(WorkerStarted(0, "cpu", 1, 3, 1))
    clock.now += 1.0
    gallery.on_tick()
    assert "0/6 images" in gallery.widget.header["stats"]


def test_stop_button_calls_cancel_once_allowed() -> None:
    gallery = _gallery(Clock())
    stops: list[bool] = []
    assert gallery.widget.stoppable is False
    gallery.widget._on_custom(gallery.widget, {"type": "stop"}, [])  # not allowed yet: nothing happens
    gallery.allow_stop(lambda: stops.append(True))
    assert gallery.widget.stoppable is True
    gallery.widget._on_custom(gallery.widget, {"type": "stop"}, [])
    assert stops == [True]


def test_a_blanked_image_says_so_in_its_tile() -> None:
    gallery = _gallery(Clock())
    img = Image.new("RGB", (96, 64))
    msg = ImageReady(0, 0, "cpu", 0.5, "RGB", img.size, img.tobytes(), thumbnail_jpeg(img, 256), note="blanked by X")
    gallery.on_message(msg)
    gallery.flush()
    assert "blanked by X" in gallery.tiles[0].meta


def test_first_image_is_sent_at_once_then_coalesced() -> None:
    clock = Clock()
    gallery = _gallery(clock)
    gallery.on_message(_ready(0, 0))
    gallery.on_tick()  # no time has passed, yet the first image goes out
    assert gallery.tiles[0].status == "done"
    gallery.on_message(_ready(1, 0))
    gallery.on_tick()  # the next one waits for the interval
    assert gallery.tiles[1].status == "queued"
    clock.now += 0.2
    gallery.on_tick()
    assert gallery.tiles[1].status == "done"


def test_a_sweep_is_laid_out_as_labelled_grids_in_the_widget() -> None:
    axes: dict[str, list[object]] = {"guidance": [3.0, 7.5], "steps": [2, 4]}
    opts = GenerateOptions(seed=0, sweep=axes)
    jobs = make_jobs(PROMPTS[:2], 1, 0, sweep=axes)
    gallery = _gallery(Clock(), RunInfo(jobs, opts, "tiny-model", 0, 2, "cpu", 64, 64))
    assert gallery.widget is not None
    grids = gallery.widget.grids
    assert [g["heading"] for g in grids] == ["steps=2", "steps=4"]
    assert all(g["columns"] == ["guidance=3", "guidance=7.5"] for g in grids)
    assert all(g["rows"] == PROMPTS[:2] for g in grids)
    by_index = {job.index: job for job in jobs}
    for grid, steps in zip(grids, [2, 4], strict=True):
        for row, prompt in zip(grid["cells"], PROMPTS[:2], strict=True):
            cells = [by_index[i] for i in row]
            assert [j.prompt for j in cells] == [prompt, prompt]
            assert [j.settings for j in cells] == [{"guidance": 3.0, "steps": steps}, {"guidance": 7.5, "steps": steps}]
            assert cells[0].seed == cells[1].seed  # a row differs in the swept value only
    assert sorted(i for g in grids for row in g["cells"] for i in row) == list(range(8))
    assert "2–4 steps" in gallery.widget.header["title"]
    assert "steps 0/24" in gallery.widget.header["stats"]  # each image's own step count: 4 × 2 + 4 × 4
    assert _gallery(Clock()).widget.grids == []  # no sweep: tiles flow in prompt order


def test_more_like_this_columns_say_which_variation_in_a_few_characters() -> None:
    """Issue 30 item 5d: the 8 "More like this" columns all read "variation_seed..." once cut to a column.

    Each column is captioned with what differs, short enough for the narrowest column (120 px).
    """
    axes: dict[str, list[object]] = {"variation_seed": list(range(1, 9))}
    opts = GenerateOptions(seed=0, sweep=axes, variation_strength=0.2)
    jobs = make_jobs(PROMPTS[:1], 1, 0, sweep=axes)
    gallery = _gallery(Clock(), RunInfo(jobs, opts, "tiny-model", 0, 2, "cpu", 64, 64))
    columns = gallery.widget.grids[0]["columns"]
    assert columns == [f"variation {v}" for v in range(1, 9)]
    assert gallery.widget.tiles[2].meta.startswith("variation 3 · #2")


# -- issue 18: stopped runs, queued runs, background static copies, downloads, sweep captions --------


def test_stop_says_stopped_on_unfinished_tiles_and_busy_workers() -> None:
    """After Stop, tiles left say "not generated (stopped)" and a worker with work left says "stopped"."""
    clock = Clock()
    run = _run(k=2)
    gallery = _gallery(clock, run)
    gallery.on_message(WorkerStarted(0, "cpu", 1, 2, 1))
    gallery.on_message(WorkerStarted(1, "cpu", 2, 4, 1))
    for index in (0, 1):
        gallery.on_message(_ready(index, 0))
    gallery.on_message(WorkerFinished(0))  # worker 0 made its whole share before the Stop
    gallery.on_message(_ready(2, 1))
    gallery.on_message(StepProgress(1, (3,), 2, 4))
    gallery.on_message(WorkerFinished(1))  # the cancelled run's end, as the pool reports it
    records = [ImageRecord(i, run.jobs[i].prompt, i, run.jobs[i].seed, rank=0, thumbnail=b"\xff") for i in (0, 1, 2)]
    result = _result(gallery, run, records)
    result.interrupted = True
    gallery.on_end(result)
    widget = gallery.widget
    assert [t.status for t in widget.tiles] == ["done"] * 3 + ["stopped"] * 3
    assert {t.label for t in widget.tiles[3:]} == {"not generated (stopped)"}
    assert [t.fraction for t in widget.tiles[3:]] == [0.0] * 3
    assert widget.header["workers"] == ["worker 0 · cpu · 2/2 images · done", "worker 1 · cpu · 1/4 images · stopped"]
    assert gallery.static_html(result).count("not generated (stopped)") == 3
    assert "queued" not in gallery.static_html(result)


def test_a_stopped_tile_drops_its_live_preview() -> None:
    """Issue 30 item 5c: a tile stopped mid-denoise showed its noisy preview under "not generated (stopped)".

    The preview was of an image that never came: once the run is over the tile holds no picture at all.
    """
    clock = Clock()
    run = _run(k=1)
    gallery = _gallery(clock, run)
    gallery.on_message(WorkerStarted(0, "cpu", 1, 3, 1))
    gallery.on_message(StepPreview(1, 0, 2, 4, thumbnail_jpeg(Image.new("RGB", (24, 16), (9, 9, 9)), 96)))
    gallery.flush()
    assert gallery.widget.tiles[1].preview  # forming, as the live tile shows it
    result = _result(gallery, run, [])
    result.interrupted = True
    gallery.on_end(result)
    tile = gallery.widget.tiles[1]
    assert tile.label == "not generated (stopped)" and tile.preview == b"" and tile.thumbnail == b""


def test_a_run_that_lost_images_without_a_stop_says_not_generated() -> None:
    gallery = _gallery(Clock())
    run = gallery._run
    gallery.on_message(WorkerStarted(0, "cpu", 1, 3, 1))
    gallery.on_end(_result(gallery, run, []))  # a worker died: nothing was stopped
    assert {t.label for t in gallery.widget.tiles} == {"not generated"}
    assert gallery.widget.header["workers"][0] == "worker 0 · cpu · 0/3 images · done"


def test_queued_run_workers_say_waiting() -> None:
    """Queued behind another run, the workers are busy with that one: not "loading the pipeline"."""
    clock = Clock()
    gallery = _gallery(clock)
    gallery.on_queued(1)
    assert gallery.widget.header["workers"] == ["worker 0 · waiting", "worker 1 · waiting"]
    gallery.on_message(WorkerStarted(0, "cpu", 1, 3, 1))  # the workers took it
    gallery.flush()
    assert gallery.widget.header["workers"][0] == "worker 0 · cpu · 0/3 images · waiting"
    assert "waiting" not in gallery.widget.header["workers"][1]


class Displays:
    """Records ``display`` / ``update_display`` calls of the gallery module by display id."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import nbdist.notebook.gallery as module

        self.sent: list[tuple[str, str | None, dict]] = []
        monkeypatch.setattr(module, "display", lambda b, raw=True, display_id=None: self._add("display", display_id, b))
        monkeypatch.setattr(
            module, "update_display", lambda b, raw=True, display_id=None: self._add("update", display_id, b)
        )

    def _add(self, kind: str, display_id: str | None, bundle: dict) -> None:
        self.sent.append((kind, display_id, bundle))

    def of(self, display_id: str) -> list[dict]:
        return [bundle for _kind, did, bundle in self.sent if did == display_id]


def test_background_run_keeps_a_static_copy_as_images_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Out[] follows a background run: its own display holds the static copy, so a saved notebook keeps it."""
    shown = Displays(monkeypatch)
    clock = Clock()
    run = _run(k=1)
    gallery = Gallery(interval=0.2, clock=clock, fallback=False, background=True)
    gallery.on_start(run)
    static_id = next(did for kind, did, _ in shown.sent if kind == "display" and did)
    first = shown.of(static_id)[0]
    assert static_class(gallery.token) in first["text/html"] and "<img " not in first["text/html"]
    assert first["text/html"].count("not generated yet") == 3
    gallery.on_message(_ready(0, 0))
    gallery.on_tick()  # the first image: at once
    assert len(shown.of(static_id)) == 2 and shown.of(static_id)[-1]["text/html"].count("<img ") == 1
    assert "still running: 1 of 3 images so far" in shown.of(static_id)[-1]["text/plain"]
    gallery.on_message(_ready(1, 1))
    clock.now += 0.5
    gallery.on_tick()  # the widget gets it; the static copy waits (each update re-sends every thumbnail)
    assert len(shown.of(static_id)) == 2 and gallery.tiles[1].status == "done"
    clock.now += 2.0
    gallery.on_tick()
    assert shown.of(static_id)[-1]["text/html"].count("<img ") == 2
    clock.now += 5.0
    gallery.on_tick()  # nothing new: nothing sent
    assert len(shown.of(static_id)) == 3
    ready = _ready(2, 0)
    gallery.on_message(ready)
    records = [
        ImageRecord(i, PROMPTS[i], i, 10 + i, image=ready.to_pil(), rank=0, thumbnail=ready.thumbnail) for i in range(3)
    ]
    result = _result(gallery, run, records)
    gallery.on_end(result)
    final = shown.of(static_id)[-1]
    assert final["text/html"] == result._repr_html_()  # exactly the copy a blocking run's Out[] holds
    assert final["text/html"].count("<img ") == 3 and result.summary() in final["text/plain"]


def test_a_blocking_run_has_no_extra_static_display(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = Displays(monkeypatch)
    gallery = Gallery(fallback=False)
    gallery.on_start(_run(k=1))
    gallery.on_message(_ready(0, 0))
    gallery.on_tick()
    assert [kind for kind, _did, _b in shown.sent] == ["display"]  # the widget only: its Out[] is the copy


def test_download_png_carries_the_parameters_the_saved_pngs_do(tmp_path) -> None:
    """ "Download PNG" in the viewer: the same text chunk as a ``--save-dir`` PNG (PIL, exiftool read it)."""
    import json

    from nbdist.parent.output.saving import DiskWriter

    run = _run(k=1)
    gallery = _gallery(Clock(), run)
    writer = DiskWriter(tmp_path)
    writer.on_start(run)
    ready = _ready(1, 1, (10, 200, 10))
    writer.on_message(ready)
    record = ImageRecord(1, PROMPTS[1], 1, 11, image=ready.to_pil(), rank=1, device="cpu", seconds=0.5)
    result = _result(gallery, run, [record])
    writer.on_end(result)
    gallery.on_end(result)
    answer = gallery.full_image(1)
    downloaded = Image.open(io.BytesIO(answer.png))
    saved = Image.open(next(tmp_path.glob("*.png")))
    assert downloaded.text == saved.text
    meta = json.loads(downloaded.text["nbdist"])
    assert meta["prompt"] == PROMPTS[1] and meta["seed"] == 11 and meta["steps"] == 4 and meta["model"] == "tiny-model"
    assert downloaded.getpixel((5, 5)) == (10, 200, 10)


def _sweep_result(prompts: list[str], axes: dict[str, list[object]]) -> tuple[Gallery, GenerationResult]:
    opts = GenerateOptions(seed=0, sweep=axes)
    jobs = make_jobs(prompts, 1, 0, sweep=axes)
    run = RunInfo(jobs, opts, "tiny-model", 0, 2, "cpu", 64, 64)
    gallery = _gallery(Clock(), run)
    records = [
        ImageRecord(j.index, j.prompt, j.prompt_index, j.seed, rank=0, thumbnail=b"\xff", params=j.settings)
        for j in jobs
    ]
    result = _result(gallery, run, records)
    result.jobs = jobs
    gallery.on_end(result)
    return gallery, result


def test_sweep_captions_leave_the_prompt_to_the_row_label() -> None:
    gallery, result = _sweep_result(PROMPTS[:2], {"guidance": [3.0, 7.5], "steps": [2, 4]})
    assert {t.caption for t in gallery.widget.tiles} == {""}  # the row label says it
    assert [t.prompt for t in gallery.widget.tiles][:2] == [PROMPTS[0]] * 2  # still there for alt text, viewer
    page = result._repr_html_()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 8 and all(c.startswith("<small>") and "a dog" not in c for c in captions)
    assert page.count('<th scope="row">a dog</th>') == 2  # one row per steps value's grid
    assert 'alt="a dog"' in page
    # One prompt and two axes: the rows are the second axis, so the caption keeps the prompt.
    gallery, result = _sweep_result(["a dog"], {"guidance": [3.0, 7.5], "steps": [2, 4]})
    assert {t.caption for t in gallery.widget.tiles} == {"a dog"}
    assert all(c.startswith("a dog<br>") for c in re.findall(r"<figcaption>(.*?)</figcaption>", result._repr_html_()))
    assert {t.caption for t in _gallery(Clock()).widget.tiles} == set(PROMPTS)  # no sweep: the prompt


def _display_updates(kernel, display_id: str, until, timeout: float = 120) -> list[dict]:
    """Every ``update_display_data`` for ``display_id`` read off iopub until ``until(content)`` holds.

    Read directly: a background run's updates come after its cell is over, with whatever parent the
    kernel's thread has, so ``Kernel.execute`` (which keeps only its own cell's messages) would miss them.
    """
    import time

    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while not (seen and until(seen[-1])):
        msg = kernel.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        content = msg["content"]
        if msg["msg_type"] == "update_display_data" and content["transient"]["display_id"] == display_id:
            seen.append(content)
    return seen


def test_background_run_keeps_its_gallery_in_the_cell(kernel, tiny_model) -> None:
    """The background cell's third output is the static copy: images so far, then the finished run's copy."""
    prompts = "\n".join(f"p{i}" for i in range(5))
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 2 --seed 0 --background -o h\n{prompts}")
    assert ex.error is None, ex.error
    displays = [m.content for m in ex.of_type("display_data")]
    assert len(displays) == 3 and WIDGET_VIEW_MIMETYPE in displays[0]["data"]
    static_id = displays[2]["transient"]["display_id"]
    assert "still running: 0 of 5" in displays[2]["data"]["text/plain"]
    updates = _display_updates(kernel, static_id, lambda c: "still running" not in c["data"]["text/plain"])
    assert "still running: 1 of 5 images so far" in updates[0]["data"]["text/plain"]  # the first image at once
    assert updates[0]["data"]["text/html"].count("<img ") == 1
    final = updates[-1]["data"]
    assert final["text/html"].count("<img ") == 5 and "5 of 5 images" in final["text/plain"]
    token = kernel.value("h.wait(30).display_token")
    assert static_class(token) in final["text/html"] and static_class(token) in displays[2]["data"]["text/html"]
    assert kernel.value("h.wait()._repr_html_()") == final["text/html"]


def test_interrupted_run_marks_tiles_and_workers_stopped(kernel, tiny_model) -> None:
    """Interrupt (the notebook's stop button): tiles left say "not generated (stopped)", workers "stopped"."""
    from test_faults import OnFirstImage

    prompts = "\n".join(f"prompt number {i}" for i in range(16))
    hook = OnFirstImage(kernel, lambda h: h.kernel.km.interrupt_kernel())
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 2 --steps 20 --seed 0 -o res\n{prompts}", on_message=hook)
    assert hook.at is not None and ex.error is None, ex.error
    states = [m.content["data"]["state"] for m in ex.of_type("comm_msg") if m.content["data"].get("method") == "update"]
    labels = [s["label"] for s in states if "label" in s]
    missing = kernel.value("len(res.missing)")
    assert 0 < missing < 16 and labels.count("not generated (stopped)") == missing
    workers = [s["header"]["workers"] for s in states if "header" in s][-1]
    assert all(line.endswith(" · stopped") or line.endswith(" · done") for line in workers), workers
    assert any(line.endswith(" · stopped") for line in workers), workers
    page = ex.of_type("execute_result")[0].content["data"]["text/html"]
    assert page.count("not generated (stopped)") == missing and "queued" not in page
