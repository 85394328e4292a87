"""The demo model's training data, drawn in code: one flat-colour shape on a plain background, 64×64.

Why drawn: the demo model must be trainable offline, from nothing but this repository, and its output
must be checkable from pixels (see ``nbdist.demo.evaluate``). Every image comes with a caption from one
template, ``a [size] {colour} {shape} [position] on a {colour} background``; the size and position
words are optional, and when a caption leaves them out the drawing varies them freely.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "IMAGE_SIZE",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "caption",
    "draw",
    "random_scene",
    "vocabulary",
]

IMAGE_SIZE = 64

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

SHAPES = ("circle", "square", "triangle")

# Side of the shape's bounding box, in pixels, for each size word (None: no size word in the caption).
SIZES: dict[str | None, tuple[int, int]] = {"small": (18, 24), "large": (34, 44), None: (18, 44)}

# Position phrase -> (horizontal, vertical) place, each -1 (left/top), 0 (centre) or 1 (right/bottom).
POSITIONS: dict[str, tuple[int, int]] = {
    "on the left": (-1, 0),
    "on the right": (1, 0),
    "at the top": (0, -1),
    "at the bottom": (0, 1),
    "in the center": (0, 0),
    "in the top left": (-1, -1),
    "in the top right": (1, -1),
    "in the bottom left": (-1, 1),
    "in the bottom right": (1, 1),
}

_SUPERSAMPLE = 4  # draw at 4× and downsample, so edges are anti-aliased like a real photo's


@dataclass(frozen=True)
class Scene:
    """Everything one training image shows; ``size`` and ``position`` are the caption's words, if any."""

    colour: str
    shape: str
    background: str
    side: int  # bounding-box side in pixels
    cx: float  # centre of the bounding box, pixels
    cy: float
    size: str | None = None
    position: str | None = None


def caption(scene: Scene) -> str:
    """The caption of a scene: ``a [size] {colour} {shape} [position] on a {background} background``."""
    words = ["a"]
    if scene.size:
        words.append(scene.size)
    words += [scene.colour, scene.shape]
    if scene.position:
        words.append(scene.position)
    words += ["on", "a", scene.background, "background"]
    return " ".join(words)


def vocabulary() -> list[str]:
    """Every word a caption can hold, in a fixed order (the demo tokenizer has one token per word)."""
    words = ["a", "on", "background", *PALETTE, *SHAPES, "small", "large"]
    for phrase in POSITIONS:
        words += [w for w in phrase.split() if w not in words]
    return list(dict.fromkeys(words))


def _centre_range(place: int | None, side: int) -> tuple[float, float]:
    """Where a shape's centre may go along one axis: anywhere, or the band of a place word.

    The bands (centre before 22, between 28 and 36, after 42) leave gaps so a judge can tell them
    apart; a shape too large for its band is pushed as far that way as the image allows.
    """
    lo, hi = side / 2 + 1, IMAGE_SIZE - side / 2 - 1
    if place is None:
        return lo, hi
    a, b = {-1: (lo, 22.0), 0: (28.0, 36.0), 1: (42.0, hi)}[place]
    a, b = max(a, lo), min(b, hi)
    if a > b:
        a = b = {-1: lo, 0: IMAGE_SIZE / 2, 1: hi}[place]
    return a, b


def random_scene(
    rng: random.Random,
    colour: str | None = None,
    shape: str | None = None,
    background: str | None = None,
    p_size: float = 0.3,
    p_position: float = 0.3,
) -> Scene:
    """A random scene; fixed fields are kept, and size/position words are used with the given chances."""
    colour = colour or rng.choice(list(PALETTE))
    background = background or rng.choice([c for c in PALETTE if c != colour])
    shape = shape or rng.choice(SHAPES)
    size = rng.choice(["small", "large"]) if rng.random() < p_size else None
    position = rng.choice(list(POSITIONS)) if rng.random() < p_position else None
    side = rng.randint(*SIZES[size])
    h, v = POSITIONS[position] if position else (None, None)
    cx = rng.uniform(*_centre_range(h, side))
    cy = rng.uniform(*_centre_range(v, side))
    return Scene(colour, shape, background, side, cx, cy, size, position)


def draw(scene: Scene) -> Image.Image:
    """Render a scene as a 64×64 RGB image (flat colours, anti-aliased edges)."""
    s = _SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), PALETTE[scene.background])
    pen = ImageDraw.Draw(big)
    half = scene.side / 2
    x0, y0, x1, y1 = ((scene.cx - half) * s, (scene.cy - half) * s, (scene.cx + half) * s, (scene.cy + half) * s)
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "triangle":
        pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def batch(rng: random.Random, n: int, **kwargs: float) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``n`` random images as a uint8 array (n, 64, 64, 3), with their captions and scenes."""
    scenes = [random_scene(rng, **kwargs) for _ in range(n)]
    images = np.stack([np.asarray(draw(sc)) for sc in scenes])
    return images, [caption(sc) for sc in scenes], scenes
