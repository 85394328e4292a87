"""Live previews in the worker: every few denoising steps, the latents drawn as a ~96 px JPEG.

Why not the VAE: a full decode per step would cost about as much as the step itself. A linear map
from latent channels to RGB costs one small matrix product: the published factors for SD1.x, SDXL,
SD3 and Flux latents, and for any other VAE (the demo model, the tiny pipelines, a fine-tuned VAE) a
map fitted once from the VAE itself by least squares and cached on disk. ``--preview taesd`` uses a
tiny autoencoder (``AutoencoderTiny``) instead: sharper, still far cheaper than the VAE.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..call_settings import default_size
from ..jobs import ImageJob
from ..messages import StepPreview
from ..preview_choice import PreviewChoice, parse_preview, published_taesd, vae_family_key
from .clean_estimate import CleanEstimate

__all__ = ["KNOWN_FACTORS", "LinearMap", "PreviewHook", "Previews", "fit_linear_map", "linear_map"]

PREVIEW_SIDE = 96  # the longest side of a preview, in pixels
EVERY = 4  # a preview at least every this many steps ...
INTERVAL = 0.25  # ... and after any step this long after the last one: slow steps get one each

# (latent channels, VAE scaling factor) -> per channel R, G, B weights and a bias, for latents as the
# pipeline holds them (scaled). The numbers are ComfyUI's ``comfy/latent_formats.py``.
KNOWN_FACTORS: dict[tuple[int, float], tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    (4, 0.18215): (  # SD 1.x / 2.x
        ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
        (0.0, 0.0, 0.0),
    ),
    (4, 0.13025): (  # SDXL
        ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
        (0.1084, -0.0175, -0.0011),
    ),
    (16, 1.5305): (  # SD3 / SD3.5
        (
            (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
            (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
            (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
            (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
            (-0.1448, -0.1463, -0.1189),
        ),
        (0.2394, 0.2135, 0.1925),
    ),
    (16, 0.3611): (  # Flux
        (
            (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
            (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
            (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
            (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
            (-0.1262, -0.0982, -0.0778),
        ),
        (-0.0329, -0.0718, -0.0851),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class LinearMap:
    """RGB in [-1, 1] = latents (channels last) @ weights + bias; the preview is its half plus a half."""

    weights: tuple[tuple[float, ...], ...]  # one row of R, G, B per latent channel
    bias: tuple[float, ...] = (0.0, 0.0, 0.0)

    def rgb(self, latents: Any) -> Any:
        """``(B, C, h, w)`` latents to ``(B, 3, h, w)`` colours in [0, 1], on the latents' device."""
        import torch

        weights = torch.tensor(self.weights, dtype=torch.float32, device=latents.device)
        bias = torch.tensor(self.bias, dtype=torch.float32, device=latents.device)
        out = torch.einsum("bchw,cr->brhw", latents.float(), weights) + bias[None, :, None, None]
        return ((out + 1) / 2).clamp(0, 1)


def linear_map(vae: Any) -> LinearMap:
    """The published factors of this VAE's latents, else a map fitted from it (once, then from the disk cache)."""
    key = vae_family_key(vae)
    known = KNOWN_FACTORS.get(key) if key is not None else None
    if known is not None:
        return LinearMap(*known)
    path = _cache_path(vae)
    try:
        data = json.loads(path.read_text())
        return LinearMap(tuple(tuple(row) for row in data["weights"]), tuple(data["bias"]))
    except (OSError, ValueError, KeyError):
        pass
    fitted = fit_linear_map(vae)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")  # two workers may fit at once: the last rename wins
    temporary.write_text(json.dumps({"weights": fitted.weights, "bias": fitted.bias}))
    os.replace(temporary, path)
    return fitted


def fit_linear_map(vae: Any, count: int = 8, side: int = 128, seed: int = 0) -> LinearMap:
    """Least squares from latent channels to RGB, on images of random colour blocks through the VAE's encoder.

    Why encode pictures rather than decode random latents: random normal latents are far from what a
    denoised image's latents look like, and a map fitted on them drew the demo model's final latents
    at twice the error (mean absolute difference 0.23-0.40 against 0.08-0.17 on a 0-1 scale).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    blocks = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(blocks, size=side, mode="nearest")
    param = next(vae.parameters())
    with torch.inference_mode():
        encoded = vae.encode(images.to(param.device, param.dtype))
        raw = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latent
        shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        latents = ((raw.float() - shift) * float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)).cpu()
    target = torch.nn.functional.adaptive_avg_pool2d(images, latents.shape[-2:])
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(x, target.permute(0, 2, 3, 1).reshape(-1, 3)).solution
    weights = tuple(tuple(round(float(v), 6) for v in row) for row in solution[:-1].tolist())
    return LinearMap(weights, tuple(round(float(v), 6) for v in solution[-1].tolist()))


def _cache_path(vae: Any) -> Path:
    """Where a fitted map is kept: named by the VAE's config and the bytes of its last layer (its weights)."""
    import torch

    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    last = list(vae.parameters())[-1].detach().to("cpu", torch.float32).contiguous()
    digest.update(last.numpy().tobytes())
    root = Path(os.environ.get("NBDIST_CACHE", Path.home() / ".cache" / "nbdist"))
    return root / "previews" / f"{digest.hexdigest()[:24]}.json"


Decode = Callable[[Any], Any]  # latents (B, C, h, w) -> colours (B, 3, H, W) in [0, 1]


class Previews:
    """One worker's preview decoders, made on first use and kept for every later run (warm workers)."""

    def __init__(self) -> None:
        self._decoders: dict[tuple[int, PreviewChoice], Decode | None] = {}
        self._off_for: Any = None  # the run (its CallSettings) whose previews failed: none more for it

    def decoder(self, pipe: Any, choice: PreviewChoice) -> Decode | None:
        """How this pipeline's latents become a preview; None with ``off`` or a pipeline without a VAE."""
        vae = getattr(pipe, "vae", None)
        if choice.mode == "off" or vae is None or not hasattr(vae, "config"):
            return None
        key = (id(vae), choice)
        if key not in self._decoders:
            try:
                self._decoders[key] = _taesd(vae, choice.source) if choice.mode == "taesd" else linear_map(vae).rgb
            except Exception as exc:  # no preview is no reason to fail an image: said once, in the worker's log
                print(f"nbdist: no previews ({choice.mode}): {type(exc).__name__}: {exc}", file=sys.stderr)
                self._decoders[key] = None
        return self._decoders[key]

    def hook(
        self, pipe: Any, rank: int, batch: Sequence[ImageJob], call: Any, send: Callable[[StepPreview], None]
    ) -> PreviewHook | None:
        """The step reporter's ``preview`` for one batch, or None when this run makes no previews."""
        decode = self.decoder(pipe, parse_preview(getattr(call, "preview", "auto")))
        if decode is None or self._off_for is call:
            return None
        width, height = batch[0].settings.get("size", (call.effective.get("width"), call.effective.get("height")))
        if height is None or width is None:  # the kernel held no pipeline to read them from: this one's
            height, width = default_size(pipe)

        def to_message(index: int, step: int, total: int, jpeg: bytes) -> None:
            send(StepPreview(index, rank, step, total, jpeg))

        def off(exc: Exception) -> None:
            self._off_for = call
            print(f"nbdist: previews off for this run: {type(exc).__name__}: {exc}", file=sys.stderr)

        return PreviewHook(decode, to_message, [job.index for job in batch], (height, width), pipe, off)


def _taesd(vae: Any, source: str | None) -> Decode:
    """An ``AutoencoderTiny`` on the VAE's device: ``source``, or the published one for this family's latents."""
    import torch
    from diffusers import AutoencoderTiny

    source = source or published_taesd(vae)
    if source is None:
        raise ValueError("--preview taesd: no published TAESD for this VAE; give one with --preview taesd=PATH")
    param = next(vae.parameters())
    tiny = AutoencoderTiny.from_pretrained(os.path.expanduser(source), torch_dtype=param.dtype).to(param.device)
    scale, shift = float(tiny.config.scaling_factor or 1.0), float(tiny.config.shift_factor or 0.0)

    def decode(latents: Any) -> Any:
        with torch.inference_mode():
            return ((tiny.decode(latents.to(param.dtype) / scale + shift).sample.float() + 1) / 2).clamp(0, 1)

    return decode


def jpegs(rgb: Any, side: int = PREVIEW_SIDE) -> list[bytes]:
    """``(B, 3, H, W)`` colours in [0, 1] to one small JPEG each, ``side`` px on the longest side."""
    from PIL import Image

    arrays = (rgb * 255).round().to("cpu").byte().permute(0, 2, 3, 1).numpy()
    out = []
    for array in arrays:
        image = Image.fromarray(array)
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=80)
        out.append(buf.getvalue())
    return out


class PreviewHook:
    """Given the latents after each step, makes a preview of every image in the batch when one is due.

    Due: every ``EVERY`` steps, the last step, and any step ``INTERVAL`` seconds after the last preview
    (so slow steps each get one, and a fast GPU's stream stays bounded). What it draws is the
    scheduler's estimate of the clean image (x0) while ``watching`` the pipeline's scheduler, as
    ComfyUI does; the noisy latents only where the scheduler gives no estimate.
    """

    def __init__(
        self,
        decode: Decode,
        send: Callable[[int, int, int, bytes], None],
        indices: Sequence[int],
        size: tuple[int | None, int | None],
        pipe: Any,
        off: Callable[[Exception], None] | None = None,
    ) -> None:
        self._decode, self._send, self._indices = decode, send, tuple(indices)
        self._size, self._pipe, self._off = size, pipe, off
        self._last = time.monotonic()
        self._failed = False
        self._clean = CleanEstimate()

    def watching(self, scheduler: Any) -> AbstractContextManager[None]:
        """For one pipeline call: previews draw ``scheduler``'s x0 rather than the noisy sample."""
        return self._clean.watching(scheduler)

    def __call__(self, done: int, total: int, latents: Any) -> None:
        """Draw the latents when a preview is due; one that fails turns previews off, never fails the image."""
        now = time.monotonic()
        if self._failed or latents is None or not (done % EVERY == 0 or done == total or now - self._last >= INTERVAL):
            return
        self._last = now
        try:
            self._draw(done, total, latents)
        except Exception as exc:  # a preview is a nicety: the denoising goes on without it
            self._failed = True
            if self._off is not None:
                self._off(exc)

    def _draw(self, done: int, total: int, latents: Any) -> None:
        clean = self._clean.latest()
        if clean is not None and clean.shape == latents.shape:
            latents = clean
        if latents.ndim == 3 and hasattr(self._pipe, "_unpack_latents"):  # Flux packs 2x2 patches into tokens
            height, width = self._size
            latents = self._pipe._unpack_latents(latents, height, width, self._pipe.vae_scale_factor)
        for index, jpeg in zip(self._indices, jpegs(self._decode(latents[: len(self._indices)])), strict=True):
            self._send(index, done, total, jpeg)
