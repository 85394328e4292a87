"""Every notebook cell the docs show pastes into a cell as it is: IPython turns it into Python that compiles.

Issue 30 item 5f: usage.md's LoRA block put an import and a ``%%distgen`` cell magic in one block, a
SyntaxError when pasted as one cell (a cell magic must be a cell's first line). A cell here is a
``python`` block, or an unlabelled block that starts as a cell does (a magic, an import); diagrams
and shell lines are left alone. Nothing is executed: the models the blocks name need a hub or a GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def notebook_cells(text: str) -> list[str]:
    """The fenced blocks of a page that are meant to be pasted into a notebook cell."""
    cells = []
    for lang, body in FENCE.findall(text):
        if lang == "python" or (lang == "" and re.match(r"%|from |import ", body)):
            cells.append(body)
    return cells


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cell_in_the_docs_pastes_as_a_cell(page: Path) -> None:
    for cell in notebook_cells(page.read_text(encoding="utf-8")):
        later = [line for line in cell.splitlines()[1:] if line.startswith("%%")]
        assert not later, f"{page.name}: a cell magic must be the first line of its cell:\n{cell}"
        source = TransformerManager().transform_cell(cell)
        try:
            compile(source, f"<{page.name} cell>", "exec")
        except SyntaxError as exc:
            pytest.fail(f"{page.name}: this block is not a valid cell ({exc.msg}):\n{cell}")


def test_the_docs_have_cells_to_check() -> None:
    """The check above would pass on pages with no cells at all: the fence pattern must find them."""
    cells = [c for p in PAGES for c in notebook_cells(p.read_text(encoding="utf-8"))]
    assert sum("%%distgen" in c for c in cells) >= 5 and sum("nbdist.generate(" in c for c in cells) >= 3
