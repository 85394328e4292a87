"""Exploring in a real browser: a tile forming (live previews), and the viewer's three actions.

JupyterLab on 127.0.0.1 and headless Chromium, as in ``test_browser.py`` (its server fixture and page
helpers): a run of the demo model at 80 steps, so each image forms over a second or more; screenshots
of a tile at two steps while it forms; then Copy cell, More like this and Refine from the viewer, whose
runs appear as galleries under this one, each with its own Copy cell.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, _browser_page, _notebook, _open_ready_notebook, _run_all, lab  # noqa: F401

pytestmark = pytest.mark.browser

PROMPTS = ["a red circle on a blue background", "a yellow square on a black background"]


def test_tiles_form_and_the_viewer_acts_on_an_image(lab: str, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "notebooks" / "explore.ipynb"
    cells = [
        "%load_ext nbdist",
        "from nbdist import demo_model\n\nmodel = str(demo_model())",
        "%%distgen --model {model} -n 2 --seed 0 --steps 80 -o res\n" + "\n".join(PROMPTS),
    ]
    path.write_text(json.dumps(_notebook(cells)))
    with _browser_page("failure-explore", permissions=["clipboard-read", "clipboard-write"]) as page:
        _explore(page, lab.replace("quickstart.ipynb", "explore.ipynb"))


def _explore(page, url: str) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    _open_ready_notebook(page, url)
    _run_all(page)
    gallery = page.locator(".jp-CodeCell").filter(has_text="%%distgen").locator(".nbdist-gallery").first
    forming = gallery.locator(".nbdist-tile[data-picture='preview']").first
    expect(forming).to_be_visible(timeout=180_000)
    first_label = forming.locator(".nbdist-status").inner_text()
    forming.screenshot(path=str(ARTIFACTS / "tile-forming-1.png"))
    later = gallery.locator(".nbdist-tile[data-picture='preview']").filter(
        has_not_text=re.compile(re.escape(first_label) + "$")
    )
    expect(later.first).to_be_visible(timeout=60_000)  # the same tile (or its neighbour) a few steps on
    later.first.screenshot(path=str(ARTIFACTS / "tile-forming-2.png"))
    assert re.match(r"step \d+/80", first_label), first_label
    expect(gallery.locator(".nbdist-tile[data-picture='final']")).to_have_count(2, timeout=180_000)
    expect(gallery).to_have_attribute("data-finished", "true", timeout=60_000)

    # Copy cell: the cell of this image alone, on the clipboard and shown.
    gallery.locator(".nbdist-tile").first.click()
    viewer = gallery.locator(".nbdist-viewer").first
    viewer.locator(".nbdist-copy").click()
    cell = viewer.locator(".nbdist-viewer-cell")
    expect(cell).to_contain_text("%%distgen --model demo --steps 80 --seed 0")
    assert cell.inner_text().rstrip().endswith(PROMPTS[0])
    clipboard = page.evaluate("navigator.clipboard.readText()")
    assert clipboard.startswith("%%distgen --model demo"), clipboard

    # More like this: eight variations in a panel below, each with its own Copy cell.
    viewer.locator(".nbdist-vary").click()
    panels = gallery.locator(".nbdist-panels").first.locator(":scope > .nbdist-panel")
    expect(panels).to_have_count(1, timeout=60_000)
    first_panel = panels.nth(0).locator(".nbdist-gallery").first
    expect(first_panel.locator(".nbdist-tile[data-status='done']")).to_have_count(8, timeout=240_000)
    columns = first_panel.locator(".nbdist-col-label")  # each column says which variation, uncut
    labels = columns.all_inner_texts()
    assert len(labels) == 8 and all(re.fullmatch(r"variation \d{1,4}", label) for label in labels), labels
    assert columns.evaluate_all("ls => ls.filter(l => l.scrollWidth > l.clientWidth).length") == 0

    # Refine: a new prompt at strength 0.5, a second panel.
    viewer.locator(".nbdist-refine-prompt").fill("a green circle on a blue background")
    viewer.locator(".nbdist-refine-strength").fill("0.5")
    viewer.locator(".nbdist-refine").click()
    expect(panels).to_have_count(2, timeout=60_000)
    second_panel = panels.nth(1).locator(".nbdist-gallery").first
    expect(second_panel.locator(".nbdist-tile[data-status='done']")).to_have_count(1, timeout=240_000)
    page.screenshot(path=str(ARTIFACTS / "explore-actions.png"), full_page=True)

    for panel, expected in ((first_panel, "--variation-seed"), (second_panel, "--strength 0.5")):
        panel.locator(".nbdist-tile").first.click()
        panel.locator(".nbdist-viewer").first.locator(".nbdist-copy").click()
        expect(panel.locator(".nbdist-viewer-cell").first).to_contain_text(expected)
