"""Load diffusers pipelines the way a real model is loaded, quietly, once.

Used by the parent (the kernel loads a model once on the CPU and every forked worker inherits it) and
by workers started by ``torchrun`` / ``accelerate launch`` (each loads its own copy). Never touches a
GPU: placement happens in the workers.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from . import phases, warm_imports
from .downloads import download_progress
from .options import NbdistUsageError

__all__ = [
    "DEMO_NAME",
    "cache_size",
    "cached_pipeline",
    "check_model_folder",
    "clear_cache",
    "load_pipeline",
    "locate",
    "quiet_libraries",
    "resolve_model",
    "torch_dtype",
]

DEMO_NAME = "demo"  # --model demo: the demo model shipped inside nbdist (nbdist/demo/model)

_CACHE: dict[tuple[Any, ...], Any] = {}
_CACHE_LOCK = threading.Lock()


def torch_dtype(name: str) -> Any:
    """``"float16"`` → ``torch.float16`` (names already validated by ``GenerateOptions``)."""
    import torch

    return getattr(torch, name)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide loading bars and advisory warnings of diffusers/transformers for the duration.

    A notebook cell should show the gallery, not "Loading pipeline components... 100%" and deprecation
    notices the user cannot act on. Real errors still raise.
    """
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    d_bar, t_bar = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity(dlog.CRITICAL)  # its load errors are raised too (and made short): no duplicate log line
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|diffusers|transformers)\b")
            yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if d_bar:
            dlog.enable_progress_bar()
        if t_bar:
            tlog.enable_progress_bar()


def resolve_model(model: str) -> str:
    """``demo`` (exactly that, bare) is the shipped demo model's folder; any other name is left as it is.

    Without this, ``--model demo`` asked the hub for a model called ``demo`` (11 s, then a failure). The
    short name means the same model in every working directory: a folder there called ``demo`` is
    reached as ``./demo``.
    """
    if model == DEMO_NAME:
        from .demo import demo_model

        return str(demo_model())
    return model


def looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``) is a folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model)


def check_model_folder(model: str) -> None:
    """A model named as a folder (``looks_like_path``) must exist: the one check every launcher makes first."""
    if looks_like_path(model) and not os.path.isdir(os.path.expanduser(model)):
        raise NbdistUsageError(f"model folder {model!r} does not exist")


def load_pipeline(
    model: str,
    dtype: str,
    *,
    allow_pickle: bool = False,
    device_map: str | None = None,
    max_memory: dict[Any, str] | None = None,
    variant: str | None = None,
    revision: str | None = None,
    quantization_config: Any = None,
) -> Any:
    """``DiffusionPipeline.from_pretrained`` with nbdist's rules and short errors.

    safetensors only unless ``allow_pickle`` (pickle files can run code when loaded). A missing local
    folder and a hub id that cannot be had (gated, unknown, offline, ...) become a one-line
    ``NbdistUsageError`` naming the cause and the fix, not a page of ``huggingface_hub`` traceback.
    """
    check_model_folder(model)
    expanded = os.path.expanduser(model)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warm_imports.wait(import_here=phases.listening())  # a run's loads say "importing torch…" while it lasts
    with quiet_libraries():
        from diffusers import DiffusionPipeline

        # allow_pickle: safetensors where present, pickle elsewhere (False would refuse safetensors files).
        safetensors = None if allow_pickle else True
        kwargs: dict[str, Any] = {"torch_dtype": torch_dtype(dtype), "use_safetensors": safetensors}
        if device_map is not None:
            kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
        if variant is not None:
            kwargs["variant"] = variant
        if revision is not None:
            kwargs["revision"] = revision
        if quantization_config is not None:  # a PipelineQuantizationConfig, built in a worker (--quantize)
            kwargs["quantization_config"] = quantization_config
        try:
            with component_progress(expanded if os.path.isdir(expanded) else model, revision), download_progress():
                return DiffusionPipeline.from_pretrained(expanded if os.path.isdir(expanded) else model, **kwargs)
        except Exception as exc:  # OSError, ValueError, or a transport error mid-download
            error = _load_error(model, exc, os.path.isdir(expanded), allow_pickle, variant, revision)
            if error is None:
                raise
            raise error from exc


def locate(model: str, *, allow_pickle: bool = False, variant: str | None = None, revision: str | None = None) -> str:
    """The local folder ``from_pretrained`` would load ``model`` from, fetched as it would (hub cache first).

    Asked before the kernel's cache gives up a loaded model for this one, so that a name which cannot
    be had (a typo, offline, gated) is refused while the loaded model, and the warm workers that copied
    it, stay as they were. The same short errors as ``load_pipeline``; loads no weights.
    """
    check_model_folder(model)
    expanded = os.path.expanduser(model)
    local = os.path.isdir(expanded)
    warm_imports.wait(import_here=phases.listening())
    with quiet_libraries():
        from diffusers import DiffusionPipeline

        try:
            if local:
                DiffusionPipeline.load_config(expanded)  # no model_index.json: refused here, not after the eviction
                return expanded
            safetensors = None if allow_pickle else True
            with download_progress():
                folder = DiffusionPipeline.download(
                    model, revision=revision, variant=variant, use_safetensors=safetensors
                )
            return str(folder)
        except Exception as exc:
            error = _load_error(model, exc, local, allow_pickle, variant, revision)
            if error is None:
                raise
            raise error from exc


_LOADER_LOGGER = "diffusers.pipelines.pipeline_utils"  # logs "Loaded <name> as <class> ..." per component


class _ComponentCounter(logging.Handler):
    """Counts diffusers' "Loaded ..." lines and reports "loading the pipeline: k of n components"."""

    def __init__(self, total: int | None) -> None:
        super().__init__(logging.INFO)
        self.total = total
        self.loaded = 0

    def text(self) -> str:
        if self.total:
            return f"loading the pipeline: {min(self.loaded, self.total)} of {self.total} components"
        return f"loading the pipeline: {self.loaded} component(s)" if self.loaded else "loading the pipeline…"

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Loaded "):
            self.loaded += 1
            phases.report(self.text())


@contextlib.contextmanager
def component_progress(model: str, revision: str | None = None) -> Iterator[None]:
    """While ``from_pretrained`` runs, report each component it has loaded (only when a run listens).

    diffusers loads a pipeline's components one by one and logs "Loaded unet as UNet2DConditionModel
    ..." at INFO after each; its own progress bar offers no hook (it builds ``tqdm.auto`` itself). So a
    handler counts those records on the loader's logger, raised to INFO and kept from propagating for the
    duration (the user sees no log line; ``quiet_libraries`` keeps the rest of diffusers quiet). Should a
    diffusers version stop logging them, the phase just stays at "loading the pipeline…".
    """
    if not phases.listening():
        yield
        return
    counter = _ComponentCounter(component_count(model, revision))
    logger = logging.getLogger(_LOADER_LOGGER)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    phases.report(counter.text())
    try:
        yield
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
        logger.propagate = propagate


def component_count(model: str, revision: str | None = None) -> int | None:
    """How many components ``from_pretrained`` will load, from ``model_index.json``; None if unknown.

    Read from the folder, or for a hub id from the hub cache (no network: the count is only for the text).
    """
    import json

    path: Any = os.path.join(model, "model_index.json")
    if not os.path.isfile(path):
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(model, "model_index.json", revision=revision)
        except Exception:  # not a hub id, or no cache: the count is only for the progress text
            return None
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None
    count = sum(
        1 for key, value in index.items() if not key.startswith("_") and isinstance(value, list) and None not in value
    )
    return count or None


_PICKLE_HINT = "pass --allow-pickle to load its pickle files (only for a model you trust: pickle can run code)"


def _load_error(
    model: str, exc: Exception, local: bool, allow_pickle: bool, variant: str | None, revision: str | None
) -> NbdistUsageError | None:
    """The one line to show for a failed ``from_pretrained``, or None to let ``exc`` through as it is.

    A hub id's cause is looked for first (gated, wrong id or revision, offline, full disk, missing
    variant: ``load_errors``); then the safetensors refusal; a local folder's own error is shown as is.
    """
    from .load_errors import explain_load_error

    explained = explain_load_error(model, exc, variant=variant, revision=revision)
    if explained is not None and (not local or isinstance(exc, ValueError)):
        return explained
    text = str(exc)
    if isinstance(exc, OSError):
        if not allow_pickle and ("safetensors" in text if local else "`safetensors` weights" in text):
            return NbdistUsageError(f"{model!r} has no safetensors weights for every component; {_PICKLE_HINT}")
        if local:
            return NbdistUsageError(f"could not load the model in {model!r}: {text}")
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return NbdistUsageError(
            f"could not get {model!r} from the model hub ({first}); "
            "pass a local folder saved with save_pretrained, e.g. --model ./my-sd-model"
        )
    if isinstance(exc, ValueError) and "safetensors" in text.lower():
        return NbdistUsageError(f"{model!r} has no safetensors weights; {_PICKLE_HINT}")
    return None


def cache_size() -> int:
    """How many pipelines the kernel keeps loaded: ``NBDIST_CACHE_SIZE``, default 1.

    One, because a real model is gigabytes of the kernel's RAM: switching models must not keep the
    old one alive. A notebook that alternates between two models and has the RAM sets 2.
    """
    value = os.environ.get("NBDIST_CACHE_SIZE", "1").strip()
    if not value.isdigit() or int(value) < 1:
        raise NbdistUsageError(f"NBDIST_CACHE_SIZE must be a positive integer, got {value!r}")
    return int(value)


def cached_pipeline(
    model: str, dtype: str, *, allow_pickle: bool = False, variant: str | None = None, revision: str | None = None
) -> Any:
    """Load once per kernel, keyed by (model, dtype, variant, revision): re-running a cell costs no load time.

    The cache holds ``cache_size()`` pipelines, least recently used dropped first, and drops them
    *before* loading the new one, so the kernel's peak is not old + new when nothing else holds the old;
    but only once the new one is found (``locate``): a cell with a mistyped name keeps the loaded model.
    """
    where = os.path.abspath(os.path.expanduser(model)) if looks_like_path(model) else model
    key = (where, dtype, allow_pickle, variant, revision)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE[key] = _CACHE.pop(key)  # now the most recently used
            return _CACHE[key]
        size = cache_size()
        if len(_CACHE) >= size:
            locate(model, allow_pickle=allow_pickle, variant=variant, revision=revision)  # before giving any up
            while len(_CACHE) >= size:
                _CACHE.pop(next(iter(_CACHE)))
            gc.collect()  # modules can sit in reference cycles: free their tensors before the next load
        _CACHE[key] = load_pipeline(model, dtype, allow_pickle=allow_pickle, variant=variant, revision=revision)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget the loaded pipelines and collect them, so their memory goes once nothing else holds them."""
    with _CACHE_LOCK:
        _CACHE.clear()
    gc.collect()
