"""``--init`` (refine, image-to-image): the images a run starts from, checked and written down before it starts.

Given as a record (``res[3]``), a PIL image, a file path, or a list of them (one per prompt), every init
becomes a PNG file: a path stays a path, anything else is written once into nbdist's cache folder under
its content's hash. Why files: the options then travel to the workers as short strings (not pickled
images, nor a record holding its whole run), and ``res[i].cell`` can name the init in a cell that runs
the same in a new kernel.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...options import GenerateOptions, NbdistUsageError

__all__ = ["check_img2img", "init_paths", "lookup_init", "resolve_init"]


def lookup_init(text: str, namespace: Mapping[str, Any]) -> Any:
    """``--init`` as typed in the magic: an existing file, else ``NAME`` or ``NAME[INDEX]`` from the namespace.

    Only names and integer indices are read (parsed, never ``eval``-ed): a cell's options do not run code.
    """
    if os.path.isfile(os.path.expanduser(text)):
        return text
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    index = None
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int):
        node, index = node.value, node.slice.value
    if not isinstance(node, ast.Name):
        raise NbdistUsageError(f"--init {text}: no such file, and not NAME or NAME[INDEX] of the namespace")
    if node.id not in namespace:
        raise NbdistUsageError(f"--init {text}: no file and no variable named {node.id!r}")
    value = namespace[node.id]
    try:
        return value if index is None else value[index]
    except (IndexError, KeyError, TypeError) as exc:
        raise NbdistUsageError(f"--init {text}: {type(exc).__name__}: {exc}") from None


def init_paths(init: Any, prompts: int) -> tuple[str, ...]:
    """One path, or one per prompt; records and images are written to the cache as PNGs."""
    items = list(init) if isinstance(init, Sequence) and not isinstance(init, str) else [init]
    if len(items) not in (1, prompts):
        raise NbdistUsageError(f"--init: give one image, or one per prompt ({prompts}); got {len(items)}")
    return tuple(_as_path(item) for item in items)


def _as_path(item: Any) -> str:
    if isinstance(item, str | os.PathLike):
        path = os.path.expanduser(os.fspath(item))
        if not os.path.isfile(path):
            raise NbdistUsageError(f"--init {item}: no such file")
        return path
    image = getattr(item, "image", item)  # an ImageRecord, or a PIL image
    if not hasattr(image, "save") or not hasattr(image, "size"):
        raise NbdistUsageError(f"--init: expected an image, a record or a file path, got {type(item).__name__}")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    data = buf.getvalue()
    root = Path(os.environ.get("NBDIST_CACHE", Path.home() / ".cache" / "nbdist")) / "inits"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{hashlib.sha256(data).hexdigest()[:24]}.png"
    if not path.is_file():
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
    return str(path)


def check_img2img(pipe: Any) -> None:
    """The pipeline has an image-to-image form built from the same components (``from_pipe``: no new weights)."""
    from ...pipelines import quiet_libraries

    try:
        with quiet_libraries():  # importing the auto pipelines makes transformers print notices (no torchvision)
            from diffusers import AutoPipelineForImage2Image

            AutoPipelineForImage2Image.from_pipe(pipe)
    except Exception as exc:
        raise NbdistUsageError(f"--init: {type(pipe).__name__} has no image-to-image form ({exc})") from None


def resolve_init(pipe: Any, prompts: int, options: GenerateOptions) -> GenerateOptions:
    """The options with ``init`` as path(s); ``--strength``/``--upscale`` without ``--init`` are refused."""
    if options.init is None:
        if options.strength is not None or options.upscale is not None:
            raise NbdistUsageError("--strength and --upscale refine an image: give it with --init")
        return options
    if options.strength is not None and not 0 < options.strength <= 1:
        raise NbdistUsageError(f"--strength must be in (0, 1], got {options.strength!r}")
    if options.upscale is not None and not 0 < options.upscale <= 8:
        raise NbdistUsageError(f"--upscale must be a factor in (0, 8], got {options.upscale!r}")
    if options.variation_seed is not None or "variation_seed" in options.sweep:
        raise NbdistUsageError("--init and --variation-seed: a refined image starts from the init, not from noise")
    if pipe is not None:
        check_img2img(pipe)
    paths = init_paths(options.init, prompts)
    return options.with_(init=paths[0] if len(paths) == 1 else paths)
