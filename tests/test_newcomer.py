"""What a newcomer types first, through a real kernel (and terminal IPython): issue 18, items 5-7.

Each message must lead somewhere that works, so the tests follow them: the command an error suggests
is run as written. Also: ``--model demo`` with no hub, one run per ``--save-dir``, flags named as
typed, workers named in ``ps``, a status line for ``nbdist.generate()`` in a notebook, and Ctrl-C in
terminal IPython reported once.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel import Execution, Kernel
from test_faults import workers_of

RED = "a red circle on a blue background"
OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}  # any hub lookup fails at once


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One kernel for the module, in a folder holding an (empty) ``demo`` folder: bare ``demo`` must ignore it."""
    cwd = tmp_path_factory.mktemp("newcomer")
    (cwd / "demo").mkdir()
    with Kernel(cwd=str(cwd), env={**os.environ, **OFFLINE}) as k:  # env replaces the environment: keep it
        assert k.execute("%load_ext nbdist").error is None
        yield k


def usage_error(ex: Execution) -> str:
    """The one ``UsageError`` line a cell showed (IPython prints it on stderr, no traceback)."""
    shown = ex.stream().strip()
    assert ex.error is None and len(shown.splitlines()) == 1 and shown.startswith("UsageError: "), shown
    return shown.removeprefix("UsageError: ")


def suggested(message: str) -> str:
    """The ``%distgen ... -p "..."`` command a no-prompts message offers."""
    match = re.search(r'((?<!%)%distgen --.*? -p "[^"]+")', message)
    assert match, message
    return match.group(1)


def test_empty_cell_leads_to_a_command_that_works(newcomer: Kernel) -> None:
    start = time.monotonic()
    message = usage_error(newcomer.execute("%%distgen --model demo -n 1 --steps 3 --seed 0"))
    assert message.startswith("no prompts: write them one per line below %%distgen --model demo"), message
    command = suggested(message)
    assert command == f'%distgen --model demo -n 1 --steps 3 --seed 0 -p "{RED}"'
    ex = newcomer.execute(command + " -o first")
    assert ex.error is None, ex.error
    assert newcomer.value("(first.complete, [r.prompt for r in first])") == (True, [RED])
    assert newcomer.value("first.model").endswith("nbdist/demo/model")  # the shipped model, not ./demo
    assert time.monotonic() - start < 60  # no 11 s hub lookup in there (and the hub is unreachable anyway)

    # The line magic without prompts points at the same working form, never back at the cell.
    message = usage_error(newcomer.execute("%distgen --model demo -n 1 --steps 3"))
    assert "give them with -p TEXT (repeatable) or --prompts NAME" in message and "in the cell" not in message
    assert newcomer.execute(suggested(message) + " -o second").error is None
    assert newcomer.value("second.complete") is True


def test_line_magic_takes_prompts_like_the_cli(newcomer: Kernel, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# mine\n{RED}\n\na green square on a white background\n", encoding="utf-8")
    extra = "a black triangle on a yellow background"
    ex = newcomer.execute(f"%distgen --model demo -n 1 --steps 2 --seed 0 --prompts {prompts} -p '{extra}' -o res")
    assert ex.error is None, ex.error
    assert newcomer.value("[r.prompt for r in res]") == [
        RED,
        "a green square on a white background",
        extra,
    ]
    assert newcomer.execute("ideas = ['a white circle on a black background']").error is None
    assert newcomer.execute("%distgen --model demo -n 1 --steps 2 --prompts ideas -o res2").error is None
    assert newcomer.value("len(res2)") == 1
    assert "no variable named 'nothing' and no file 'nothing'" in usage_error(
        newcomer.execute("%distgen --model demo --prompts nothing")
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [("-n 0", "-n"), ("--num-processes 0", "--num-processes"), ("-k 0", "-k"), ("-b0", "-b")],
)
def test_errors_name_the_flag_as_typed(newcomer: Kernel, flags: str, named: str) -> None:
    message = usage_error(newcomer.execute(f"%distgen --model demo {flags} -p x"))
    assert message.startswith(f"{named} must be a positive integer"), message


def test_save_dir_never_mixes_two_runs(newcomer: Kernel, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = f"%distgen --model demo -n 1 --steps 2 --seed 0 --save-dir {out}"
    assert newcomer.execute(f'{line} -p "{RED}" -p "a blue square on a white background"').error is None
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    message = usage_error(newcomer.execute(f'{line} -p "a green circle on a black background"'))
    assert message == (
        f"--save-dir {str(out)!r} already holds a run (2 PNG(s), index.html and manifest.jsonl): add --overwrite to "
        "replace it, or choose another folder"
    )
    assert sorted(p.name for p in out.iterdir()) == before  # refused before anything was written
    assert newcomer.execute(f'{line} --overwrite -p "a green circle on a black background"').error is None
    assert sorted(p.name for p in out.iterdir()) == [
        "00000-a-green-circle-on-a-black-background.png",
        "index.html",
        "manifest.jsonl",
        "notes.txt",  # not nbdist's: kept
    ]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1


def test_workers_are_named_in_ps(newcomer: Kernel) -> None:
    assert newcomer.execute(f'%distgen --model demo -n 2 --steps 2 -p "{RED}" -p x').error is None
    names = sorted(Path(f"/proc/{p.pid}/comm").read_text().strip() for p in workers_of(newcomer.pid))
    assert names == ["nbdist w0 cpu", "nbdist w1 cpu"], names
    kernel_name = Path(f"/proc/{newcomer.pid}/comm").read_text().strip()
    assert not kernel_name.startswith("nbdist"), kernel_name
    try:
        import setproctitle  # noqa: F401
    except ImportError:
        return
    titles = sorted(" ".join(p.cmdline()) for p in workers_of(newcomer.pid))
    assert titles == ["nbdist worker 0 cpu", "nbdist worker 1 cpu"], titles


def test_generate_in_a_notebook_shows_its_progress(newcomer: Kernel) -> None:
    code = f"import nbdist\nr = nbdist.generate('demo', [{RED!r}] * 12, num_processes=1, seed=0)"  # about 3 s
    ex = newcomer.execute(code)
    assert ex.error is None, ex.error
    shown = [m for m in ex.of_type("display_data", "update_display_data") if "text/plain" in m.content["data"]]
    texts = [m.content["data"]["text/plain"] for m in shown]
    assert texts and all(t.startswith("nbdist: ") for t in texts), texts
    assert len({m.content["transient"]["display_id"] for m in shown}) == 1  # one line, updated in place
    assert texts[-1].startswith("nbdist: 12 of 12 images in "), texts
    assert any(re.match(r"nbdist: \d+ of 12 images, [\d.]+ s, 1 worker on cpu", t) for t in texts[:-1]), texts
    assert shown[0].at < ex.wall - 1  # shown while it ran, not only at the end
    assert "\r" not in ex.stream() and "images" not in ex.stream(), ex.stream()  # no progress pile in the cell


def test_generate_as_the_cells_value_says_its_summary_once(newcomer: Kernel) -> None:
    """Issue 30 item 5e: ``nbdist.generate(...)`` as a cell's value showed its summary twice: the status
    line's last text and the heading of the static gallery under it. Where the gallery follows, the status
    line goes; where it does not (``r = nbdist.generate(...)``, above), the line keeps the summary."""
    ex = newcomer.execute(f"import nbdist\nnbdist.generate('demo', [{RED!r}] * 2, num_processes=1, seed=0)")
    assert ex.error is None, ex.error
    final: dict[str, str] = {}  # what each output shows once the cell is done: a display's last update wins
    for m in ex.of_type("display_data", "update_display_data", "execute_result"):
        key = m.content.get("transient", {}).get("display_id") or f"out-{len(final)}"
        final[key] = m.content["data"].get("text/html") or m.content["data"].get("text/plain", "")
    summary = re.search(r"2 of 2 images in [\d.]+ s", "".join(final.values()))
    assert summary, final
    assert sum(summary.group(0) in text for text in final.values()) == 1, final


def test_ctrl_c_in_terminal_ipython_reports_once(tmp_path: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    ipython = Path(sys.executable).parent / "ipython"
    shell = pexpect.spawn(
        str(ipython),
        ["--no-banner", "--colors=nocolor", "--simple-prompt"],
        cwd=str(tmp_path),
        env={**__import__("os").environ, **OFFLINE},
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 200),
    )
    try:
        for n, line in enumerate(["%load_ext nbdist", f"ps = [{RED!r}] * 60"], start=1):
            shell.expect(rf"In \[{n}\]: ")
            shell.sendline(line)
        shell.expect(r"In \[3\]: ")
        shell.sendline("%distgen --model demo --prompts ps -n 1 --seed 0")
        shell.expect(r"\] [1-9]\d*/60 images")  # a first image is out: the run is under way
        shell.sendintr()
        shell.expect(r"In \[4\]: ")
        out = shell.before
    finally:
        shell.terminate(force=True)
    assert out.count("interrupted") == 1, out[-1500:]
    assert re.search(r"Out\[3\]: <GenerationResult: \d+ of 60 images .*interrupted>", out), out[-1500:]
