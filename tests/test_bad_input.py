"""Bad input over a real kernel: each case is a one-line ``UsageError`` at once, with nothing started.

"Nothing started" is checked twice: no ``comm_open`` (the gallery opens its widgets before any worker is
forked, so no widget means no launch) and no child process of the kernel. Also here: the inputs that
look dangerous but must just work (prompts with any unicode, quotes, slashes, ``../``), the warning for a
prompt longer than the text encoder takes, and pickle weights only with ``--allow-pickle``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from kernel import Execution, Kernel
from PIL import Image

from nbdist.parent.machine.devices import visible_gpu_count

CASES = [
    # (id, magic line after %%distgen, cell body, expected text in the one-line error)
    ("empty cell", "--model {tiny}", "", "no prompts: write them one per line below %%distgen"),  # not IPython's
    ("only comments", "--model {tiny}", "# a comment\n\n   # another", "no prompts"),
    ("no model", "--steps 2", "a cat", "say which model"),
    ("unknown option", "--model {tiny} --bogus 3", "a cat", "unrecognized arguments: --bogus"),
    ("steps 0", "--model {tiny} --steps 0", "a cat", "--steps"),
    ("steps negative", "--model {tiny} --steps -2", "a cat", "--steps"),
    ("images per prompt 0", "--model {tiny} -k 0", "a cat", "UsageError: -k must be"),  # as typed
    ("batch size 0", "--model {tiny} --batch-size 0", "a cat", "UsageError: --batch-size must be"),
    ("num processes 0", "--model {tiny} -n 0", "a cat", "UsageError: -n must be a positive integer"),
    ("height not a multiple", "--model {tiny} --height 33", "a cat", "--height 33 is not a multiple of 2"),
    ("width not a multiple", "--model {tiny} --width 31", "a cat", "--width 31 is not a multiple of 2"),
    ("missing model folder", "--model ./no/such/model", "a cat", "does not exist"),
    ("hub id offline", "--model someorg/no-such-model", "a cat", "offline"),
    ("pipe names nothing", "--pipe nothing_here", "a cat", "no variable named 'nothing_here'"),
    ("pipe not a pipeline", "--pipe not_a_pipe", "a cat", "is not a diffusers pipeline"),
    ("save dir not writable", "--model {tiny} --save-dir /proc/nbdist-out", "a cat", "is not writable"),
    ("save dir under a file", "--model {tiny} --save-dir {file}/out", "a cat", "is not a folder"),
    ("unknown dtype", "--model {tiny} --dtype float8", "a cat", "float8"),
    ("pickle weights", "--model {pickle_model}", "a cat", "--allow-pickle"),
    ("unknown cache", "--model {tiny} --cache fast", "a cat", "unknown --cache 'fast'; choose fbc[=THRESHOLD]"),
    ("cache threshold not a number", "--model {tiny} --cache fbc=high", "a cat", "threshold must be a number"),
    ("cache threshold negative", "--model {tiny} --sweep cache=off,fbc=-1", "a cat", "finite number >= 0"),
    ("cache on a UNet model", "--model {tiny} --cache fbc=0.1", "a cat", "(UNet2DConditionModel) has no diffusers"),
]
if visible_gpu_count() == 0:
    CASES.append(("cuda without a GPU", "--model {tiny} --device cuda", "a cat", "no GPU is visible"))


@pytest.fixture(scope="module")
def pickle_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny pipeline saved with pickle (.bin) weights (transformers 5 still writes the text encoder
    as safetensors; the UNet and the VAE are pickle only)."""
    from nbdist.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("pickle-model")
    build_tiny_pipeline("tiny").save_pretrained(folder, safe_serialization=False)
    assert list((folder / "unet").glob("*.bin")) and not list((folder / "unet").glob("*.safetensors"))
    return str(folder)


@pytest.fixture(scope="module")
def shared_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One kernel for the whole module: a rejected input must leave it as it was."""
    with Kernel(cwd=str(tmp_path_factory.mktemp("kernel"))) as k:
        assert k.execute("%load_ext nbdist\nnot_a_pipe = 3").error is None
        yield k


def left_displayed(ex: Execution) -> list[str | None]:
    """Display ids the cell showed and did not empty again (None: shown without an id, so never removable)."""
    cleared = {
        m.content["transient"]["display_id"]
        for m in ex.of_type("update_display_data")
        if m.content["data"] == {"text/plain": ""}
    }
    shown = [m.content.get("transient", {}).get("display_id") for m in ex.of_type("display_data")]
    return [d for d in shown if d is None or d not in cleared]


def children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize(("line", "cell", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_usage_error(
    shared_kernel: Kernel, tiny_model: str, pickle_model: str, tmp_path: Path, line: str, cell: str, expected: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    line = line.format(tiny=tiny_model, pickle_model=pickle_model, file=a_file)
    ex = shared_kernel.execute(f"%%distgen {line}\n{cell}")
    # IPython shows a UsageError as one line on stderr: no traceback, no frames.
    shown = ex.stream().strip()
    assert ex.error is None and len(shown.splitlines()) == 1, shown
    assert shown.startswith("UsageError: ") and expected in shown, shown
    assert len(shown) < 300, shown
    # Bad input found only while loading (size, weights, hub) comes after the header went up ("loading the
    # pipeline…"): that header is removed with the error and its widget closed, so nothing is left shown.
    assert not ex.of_type("execute_result") and not left_displayed(ex), "something was displayed: the run started"
    assert not ex.of_type("comm_open") or ex.of_type("comm_close"), "a widget was left open"
    assert children(shared_kernel.pid) == []
    print(f"{ex.wall:.2f} s  {shown}")


def test_pickle_weights_with_allow_pickle(shared_kernel: Kernel, pickle_model: str) -> None:
    ex = shared_kernel.execute(f"%%distgen --model {pickle_model} --allow-pickle -n 1 --steps 1 -o res\na cat")
    assert ex.error is None, ex.error
    assert shared_kernel.value("(res.complete, len(res.images))") == (True, 1)


NASTY_PROMPTS = [
    "../../../../etc/passwd",
    "..",
    "/absolute/path/prompt",
    "a \"double\" and 'single' quoted prompt",
    "back\\slash and forward/slash",
    "日本語のプロンプト 🎨 with émojis",
    "NUL\x00 and\ttab",
    "CON",
    "   ",  # blank after stripping: skipped, not a prompt
]


def test_nasty_prompts_are_safe(shared_kernel: Kernel, tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert shared_kernel.execute(f"nasty = {NASTY_PROMPTS!r}").error is None
    ex = shared_kernel.execute(
        f"%%distgen --model {tiny_model} --prompts nasty -n 2 --steps 1 --seed 0 -o res --save-dir {out}\n"
        "# IPython refuses a cell magic with an empty body, so the cell holds a comment"
    )
    assert ex.error is None, ex.error
    kept = [p for p in NASTY_PROMPTS if p.strip()]
    assert shared_kernel.value("[r.prompt for r in res if r.ok]") == kept
    files = sorted(out.iterdir())
    pngs = [f for f in files if f.suffix == ".png"]
    assert len(pngs) == len(kept)
    assert {f.name for f in files} == {p.name for p in pngs} | {"index.html", "manifest.jsonl"}  # nothing else
    for path in pngs:
        assert re.fullmatch(r"\d{5}-[a-z0-9-]+\.png", path.name), path.name
        assert path.resolve().parent == out.resolve()
        with Image.open(path) as img:
            meta = json.loads(img.text["nbdist"])
        assert meta["prompt"] == kept[meta["index"]]  # the exact prompt travels in the file, not its name


def test_long_prompt_warns_once(shared_kernel: Kernel, tiny_model: str) -> None:
    """With ``--prompt-syntax plain`` long prompts are cut by the tokenizer: said once. (The default, weighted,
    takes them whole in chunks: tests/test_prompt_weights.py.)"""
    long_prompt = "a very detailed painting of a lighthouse on a cliff at dusk, " * 3  # > 77 tokens
    ex = shared_kernel.execute(
        f"%%distgen --model {tiny_model} -n 1 --steps 1 --seed 0 --prompt-syntax plain -o res\n"
        f"{long_prompt}\nshort one\n{long_prompt}"
    )
    assert ex.error is None, ex.error
    lines = [line for line in ex.stream("stderr").splitlines() if line.strip() and "new workers" not in line]
    assert len(lines) == 1, lines
    assert lines[0] == (
        "nbdist: 2 prompt(s) longer than the text encoder's 77 tokens will be truncated (prompt #0, #2)"
    )
    assert shared_kernel.value("res.complete") is True
