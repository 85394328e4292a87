"""Judge from pixels whether a demo image shows what its caption asked for.

Why from pixels: a test (or a newcomer) must be able to tell a model that follows its prompt from one
that makes pretty noise, without a second model to judge. The images are one flat shape on a plain
background, so three measurements suffice:

- background: the palette colour nearest to the corners (majority of the four corners);
- object colour: the palette colour nearest to the object's inner pixels (those that differ from the
  background, eroded by one pixel so anti-aliased edges, which blend both colours, do not vote);
- shape: the object's largest connected blob is compared with a circle, a square and a triangle drawn
  in its bounding box; the best overlap (IoU) wins. This refines the fill-ratio rule (circle ≈ 0.785,
  square ≈ 1, triangle ≈ 0.5 of the box), and the fill ratio is reported too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from nbdist.demo.data import PALETTE, POSITIONS, SHAPES, Scene

__all__ = ["Judgement", "accuracy_table", "judge", "judge_scene"]

_NAMES = list(PALETTE)
_COLOURS = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)
_CORNER = 6  # side of the corner patches that decide the background


@dataclass(frozen=True)
class Judgement:
    """What an image shows, as read from its pixels (``shape`` is ``None`` when no object was found)."""

    background: str
    colour: str | None
    shape: str | None
    fill: float  # object area / bounding-box area
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (inclusive) of the object's blob


def _nearest(rgb: np.ndarray, exclude: str | None = None) -> np.ndarray:
    """Index of the nearest palette colour for each row of ``rgb`` (optionally never ``exclude``)."""
    d = ((rgb[:, None, :] - _COLOURS[None, :, :]) ** 2).sum(-1)
    if exclude is not None:
        d[:, _NAMES.index(exclude)] = np.inf
    return d.argmin(1)


def _background(img: np.ndarray) -> tuple[str, np.ndarray]:
    """The background's palette name (corner majority) and its measured mean colour."""
    c = _CORNER
    patches = [img[:c, :c], img[:c, -c:], img[-c:, :c], img[-c:, -c:]]
    medians = np.array([np.median(p.reshape(-1, 3), axis=0) for p in patches])
    votes = _nearest(medians)
    best = Counter(votes.tolist()).most_common(1)[0][0]
    measured = medians[votes == best].mean(0)
    return _NAMES[best], measured


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (flood fill; images are only 64×64)."""
    h, w = mask.shape
    label = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if label[y0, x0]:
            continue
        current += 1
        label[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not label[ny, nx]:
                    label[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return label == best if best else np.zeros_like(mask)


def _templates(w: int, h: int) -> dict[str, np.ndarray]:
    """Ideal circle, square and (apex-up) triangle masks filling a w×h box, sampled at pixel centres."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    u, v = xs / w, ys / h  # 0..1 across the box
    return {
        "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
        "square": np.ones((h, w), dtype=bool),
        "triangle": np.abs(u - 0.5) <= v / 2,
    }


def judge(image: Image.Image | np.ndarray) -> Judgement:
    """Read background, object colour and shape from an RGB image (see the module's docstring)."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    background, bg = _background(img)
    far = np.linalg.norm(img - bg, axis=-1) > 40
    inner = far.copy()
    inner[1:] &= far[:-1]
    inner[:-1] &= far[1:]
    inner[:, 1:] &= far[:, :-1]
    inner[:, :-1] &= far[:, 1:]
    voters = img[inner] if inner.sum() >= 4 else img[far]
    if len(voters) < 4:
        return Judgement(background, None, None, 0.0, None)
    colour = _NAMES[Counter(_nearest(voters, exclude=background).tolist()).most_common(1)[0][0]]
    # Object pixels: closer to the object's colour than to the background along the line between them.
    obj = _COLOURS[_NAMES.index(colour)]
    axis = obj - bg
    t = ((img - bg) @ axis) / max(float(axis @ axis), 1e-6)
    blob = _largest_blob(t > 0.5)
    ys, xs = np.nonzero(blob)
    if len(ys) < 4:
        return Judgement(background, colour, None, 0.0, None)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    box = blob[y0 : y1 + 1, x0 : x1 + 1]
    fill = float(box.mean())
    ious = {name: (box & m).sum() / max((box | m).sum(), 1) for name, m in _templates(x1 - x0 + 1, y1 - y0 + 1).items()}
    shape = max(SHAPES, key=lambda s: ious[s])
    return Judgement(background, colour, shape, fill, (x0, y0, x1, y1))


def _place(centre: float) -> int:
    """-1, 0 or 1: which band of an axis a centre lies in (the drawing keeps centres out of the gaps)."""
    return -1 if centre < 26 else (1 if centre > 38 else 0)


def judge_scene(image: Image.Image | np.ndarray, scene: Scene) -> dict[str, bool]:
    """Which of the scene's requests the image meets: colour, background, shape (and size/position if asked)."""
    j = judge(image)
    out = {
        "colour": j.colour == scene.colour,
        "background": j.background == scene.background,
        "shape": j.shape == scene.shape,
    }
    if scene.size and j.box:
        side = max(j.box[2] - j.box[0], j.box[3] - j.box[1]) + 1
        out["size"] = side < 29 if scene.size == "small" else side >= 29
    if scene.position and j.box:
        cx, cy = (j.box[0] + j.box[2] + 1) / 2, (j.box[1] + j.box[3] + 1) / 2
        h, v = POSITIONS[scene.position]
        out["position"] = _place(cx) == h and _place(cy) == v
    return out


def accuracy_table(
    groups: dict[str, Iterable[tuple[Scene, Image.Image]]],
    fields: Sequence[str] = ("colour", "background", "shape", "size", "position"),
) -> tuple[str, dict[str, dict[str, float]]]:
    """Judge each (scene, generated image) of each group; a text table of accuracies and the numbers.

    A column "all three" counts images whose colour, background and shape are all right. Size and
    position are reported over the images whose captions asked for them.
    """
    numbers: dict[str, dict[str, float]] = {}
    for name, items in groups.items():
        hits: dict[str, list[bool]] = {f: [] for f in (*fields, "all three")}
        for scene, image in items:
            verdict = judge_scene(image, scene)
            for f, ok in verdict.items():
                if f in hits:
                    hits[f].append(ok)
            hits["all three"].append(verdict["colour"] and verdict["background"] and verdict["shape"])
        numbers[name] = {f: float(np.mean(v)) for f, v in hits.items() if v}
        numbers[name]["n"] = len(hits["colour"])
    cols = [f for f in (*fields, "all three") if any(f in row for row in numbers.values())]
    lines = [f"{'set':<28}{'n':>5}" + "".join(f"{c:>12}" for c in cols)]
    for name, row in numbers.items():
        cells = "".join(f"{row[c]:>12.1%}" if c in row else f"{'-':>12}" for c in cols)
        lines.append(f"{name:<28}{int(row['n']):>5}" + cells)
    return "\n".join(lines), numbers
